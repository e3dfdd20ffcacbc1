//! `bench chaos` fault `disk`: the data planes' attempt journal on a small tmpfs of its own, filled
//! to the last byte for a while (a filler file written until the kernel answers "no space"), then
//! emptied. While it is full no start can be journaled: the product must dial nothing it could not
//! record (those calls wait in the data plane, their attempts unused, until it writes again) and
//! say so on `/healthz`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// A tmpfs mounted for the run; unmounted (lazily: processes may still hold files) when dropped.
#[derive(Debug)]
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB at `dir` (created). Needs root (or CAP_SYS_ADMIN).
    pub fn mount(dir: &Path, mib: u32) -> Result<Tmpfs> {
        std::fs::create_dir_all(dir)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .output()
            .context("running mount")?;
        if !out.status.success() {
            bail!(
                "--faults disk mounts a tmpfs for the journal and could not ({}); run as root, or leave the fault out",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(Tmpfs { dir: dir.to_path_buf() })
    }

    fn filler(&self) -> PathBuf {
        self.dir.join("filler")
    }

    /// Fills the file system to the last byte; the bytes written.
    pub fn fill(&self) -> Result<u64> {
        let mut f = std::fs::File::create(self.filler())?;
        let chunk = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e.into()),
            }
        }
        // The last partial chunks: byte by byte is not needed, tmpfs fills in pages.
        Ok(written)
    }

    /// Frees what [`Tmpfs::fill`] took.
    pub fn empty(&self) -> Result<()> {
        match std::fs::remove_file(self.filler()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}
