#!/usr/bin/env bash
# Fetches the JVM servers the tests and benches run (Apache Kafka, Apache Cassandra) from Maven
# Central into ~/.cache/dialer/servers/NAME/libs, only when missing (or when its pom changed).
# Needs Java 17 and Maven (apt-get install -y openjdk-17-jre-headless maven).
set -euo pipefail
cd "$(dirname "$0")/.."
SERVERS="${DIALER_SERVERS:-$HOME/.cache/dialer/servers}"
command -v java >/dev/null || { echo "servers.sh: java is missing; install it with: apt-get install -y openjdk-17-jre-headless" >&2; exit 1; }
command -v mvn >/dev/null || { echo "servers.sh: mvn is missing; install it with: apt-get install -y maven" >&2; exit 1; }
for name in kafka cassandra; do
  pom="testkit/servers/$name/pom.xml"
  dest="$SERVERS/$name"
  stamp="$dest/pom.sha256"
  want="$(sha256sum "$pom" | cut -d' ' -f1)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && ls "$dest/libs/"*.jar >/dev/null 2>&1; then
    continue
  fi
  echo "== fetching $name from Maven Central into $dest/libs"
  rm -rf "$dest/libs"
  mkdir -p "$dest"
  mvn -q -B -f "$pom" org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
    -DoutputDirectory="$dest/libs" -DincludeScope=runtime
  echo "$want" > "$stamp"
done
