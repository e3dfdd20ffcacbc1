//! Fault `clock` of `bench chaos`: the first control plane on a wall clock of its own, stepped
//! ahead of the others and behind them in turn, under libfaketime (its monotonic clock left
//! alone, as under an NTP step).
//!
//! libfaketime translates the deadlines of `pthread_cond_timedwait` but not those of C11
//! `cnd_timedwait`, which librdkafka's threads wait with: on a clock stepped back every timed
//! wait returned at once and they spun (a core for as long as the step lasted: most of the
//! control planes' CPU in the 30-minute run), on one stepped ahead they overslept by the step.
//! A shim of our own (`bench/shim/cnd_timedwait.c`), preloaded first, sends `cnd_timedwait`
//! through `pthread_cond_timedwait`, so the process's every wait sees the clock it was given.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// libfaketime for multithreaded programs (Debian's `faketime` package).
const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

const SHIM: &str = include_str!("../shim/cnd_timedwait.c");

/// The stepped clock of one process: the offset file libfaketime reads and what to preload.
pub struct SteppedClock {
    pub file: PathBuf,
    preload: String,
}

impl SteppedClock {
    /// Builds the shim in `work` and starts the clock at the others' time.
    pub fn prepare(work: &Path) -> Result<SteppedClock> {
        if !Path::new(FAKETIME_LIB).exists() {
            bail!("--faults clock needs libfaketime ({FAKETIME_LIB}); install it with: apt-get install -y faketime");
        }
        let (src, lib) = (work.join("cnd_timedwait.c"), work.join("cnd_timedwait.so"));
        std::fs::write(&src, SHIM)?;
        let out = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&lib)
            .arg(&src)
            .output()
            .context("--faults clock compiles a small C shim: install a C compiler (apt-get install -y gcc)")?;
        if !out.status.success() {
            bail!("compiling {}: {}", src.display(), String::from_utf8_lossy(&out.stderr));
        }
        let file = work.join("faketime");
        std::fs::write(&file, "+0")?;
        Ok(SteppedClock { file, preload: format!("{} {FAKETIME_LIB}", lib.display()) })
    }

    /// The environment of the process on this clock.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("LD_PRELOAD".into(), self.preload.clone()),
            ("FAKETIME_TIMESTAMP_FILE".into(), self.file.display().to_string()),
            ("FAKETIME_CACHE_DURATION".into(), "1".into()),
            ("DONT_FAKE_MONOTONIC".into(), "1".into()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A C11 timed wait of 100 ms, repeated for a second, under the clock stepped 3 s behind
    /// and 3 s ahead: about ten waits either way (without the shim: thousands, then one).
    #[test]
    fn timed_waits_keep_their_length_on_a_stepped_clock() {
        if !Path::new(FAKETIME_LIB).exists() {
            panic!("libfaketime is missing: apt-get install -y faketime");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = SteppedClock::prepare(dir.path()).expect("shim");
        let prog = dir.path().join("waits");
        let src = dir.path().join("waits.c");
        std::fs::write(&src, WAITS).expect("write");
        let ok = Command::new("cc").args(["-O2", "-o"]).arg(&prog).arg(&src).status().expect("cc");
        assert!(ok.success());
        for step in ["-3", "+3"] {
            std::fs::write(&clock.file, step).expect("step");
            let out = Command::new(&prog).envs(clock.env()).output().expect("run");
            let n: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("a count");
            assert!((8..=11).contains(&n), "{n} waits of 100 ms in a second on a clock {step} s off");
        }
    }

    const WAITS: &str = r#"
#include <stdio.h>
#include <threads.h>
#include <time.h>
static long ms(struct timespec a, struct timespec b) { return (b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000; }
int main(void) {
    cnd_t c; mtx_t m; cnd_init(&c); mtx_init(&m, mtx_plain);
    struct timespec start, now; clock_gettime(CLOCK_MONOTONIC, &start);
    int n = 0;
    do {
        struct timespec t; timespec_get(&t, TIME_UTC);
        t.tv_nsec += 100000000; if (t.tv_nsec >= 1000000000) { t.tv_sec++; t.tv_nsec -= 1000000000; }
        mtx_lock(&m); cnd_timedwait(&c, &m, &t); mtx_unlock(&m); n++;
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while (ms(start, now) < 1000 && n < 100000);
    printf("%d\n", n);
    return 0;
}
"#;
}
