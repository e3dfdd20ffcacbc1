"""schemathesis hooks of scripts/fuzz.sh: a prompt upload (audio/wav) is sent as the bytes it is."""
import schemathesis

schemathesis.serializer.alias("audio/wav", "application/octet-stream")
