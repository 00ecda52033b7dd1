//! Files the daemon (root) reads and writes on behalf of requests: never
//! through a symbolic link, never without a size bound, never at a
//! predictable temporary name. Persona files are written as a random
//! `O_EXCL` temporary file in the same directory (the `tempfile` crate),
//! synced and renamed into place; they are read only as regular files of at
//! most [`MAX_PERSONA_BYTES`]; secrets (the API token, the gossip key) only
//! from regular files owned by root or the daemon's user and readable by
//! their owner alone.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The largest persona file the daemon reads or writes (256 KiB).
pub const MAX_PERSONA_BYTES: u64 = 256 << 10;

/// The largest secret file (token, key ring) it reads.
const MAX_SECRET_BYTES: u64 = 64 << 10;

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("a symbolic link: refused (only regular files are read, never through a link)")]
    Symlink,
    #[error("not a regular file")]
    NotRegular,
    #[error("{size} bytes, larger than the {limit} KiB limit")]
    TooLarge { size: u64, limit: u64 },
    #[error("mode {mode:04o} lets other users read it: chmod 600 it")]
    Readable { mode: u32 },
    #[error("owned by uid {uid}: it must belong to root or to the daemon's user (uid {me})")]
    Owner { uid: u32, me: u32 },
    #[error("{0}")]
    Io(#[source] std::io::Error),
}

/// Opens `path` without following a link in its last component and checks
/// it is a regular file of at most `limit` bytes.
fn open_regular(
    path: &Path,
    limit: u64,
    follow_links: bool,
) -> Result<(std::fs::File, std::fs::Metadata), ReadError> {
    let nofollow = if follow_links { 0 } else { libc::O_NOFOLLOW };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nofollow | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => ReadError::Symlink,
            _ => ReadError::Io(e),
        })?;
    let meta = f.metadata().map_err(ReadError::Io)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular);
    }
    if meta.len() > limit {
        return Err(ReadError::TooLarge {
            size: meta.len(),
            limit: limit >> 10,
        });
    }
    Ok((f, meta))
}

/// Reads at most `limit` bytes of `f` (a file that grew after the check is
/// refused, not read whole).
fn read_bounded(f: std::fs::File, limit: u64) -> Result<Vec<u8>, ReadError> {
    let mut buf = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(ReadError::Io)?;
    if buf.len() as u64 > limit {
        return Err(ReadError::TooLarge {
            size: buf.len() as u64,
            limit: limit >> 10,
        });
    }
    Ok(buf)
}

/// A persona file: a regular file of at most [`MAX_PERSONA_BYTES`], not a
/// link unless `follow_links` (the admin's opt-in).
pub fn read_persona(path: &Path, follow_links: bool) -> Result<Vec<u8>, ReadError> {
    let (f, _) = open_regular(path, MAX_PERSONA_BYTES, follow_links)?;
    read_bounded(f, MAX_PERSONA_BYTES)
}

/// A secret: a regular file (not a link), owned by root or by this process's
/// user, readable by its owner only.
pub fn read_secret(path: &Path) -> Result<String, ReadError> {
    secret(path, false)
}

/// A secret the admin names by a path that may be a link (certbot's
/// `live/*/privkey.pem`): the file it ends at is checked the same way.
pub fn read_secret_through_links(path: &Path) -> Result<String, ReadError> {
    secret(path, true)
}

/// A public file of at most `limit` bytes (a certificate chain), read
/// through links.
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let (f, _) = open_regular(path, limit, true)?;
    read_bounded(f, limit)
}

fn secret(path: &Path, follow_links: bool) -> Result<String, ReadError> {
    let (f, meta) = open_regular(path, MAX_SECRET_BYTES, follow_links)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ReadError::Readable { mode });
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(ReadError::Owner {
            uid: meta.uid(),
            me,
        });
    }
    let bytes = read_bounded(f, MAX_SECRET_BYTES)?;
    String::from_utf8(bytes).map_err(|_| {
        ReadError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not UTF-8 text",
        ))
    })
}

/// Writes a file atomically: a temporary file under a random name in the
/// same directory, created exclusively (a planted file or link at any name
/// is never opened), mode 0644, synced, then renamed over the target (which
/// replaces a link there rather than writing through it), so the watcher
/// never reads half of it.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("persona.toml");
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_large_files_and_loose_secrets_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("secret");
        std::fs::write(&target, "root only").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = d.path().join("p.toml");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(
            read_persona(&link, false),
            Err(ReadError::Symlink)
        ));
        assert_eq!(read_persona(&link, true).unwrap(), b"root only");
        assert!(matches!(read_secret(&link), Err(ReadError::Symlink)));
        assert_eq!(read_secret(&target).unwrap(), "root only");

        let big = d.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; MAX_PERSONA_BYTES as usize + 1]).unwrap();
        let e = read_persona(&big, true).unwrap_err();
        assert!(
            e.to_string().contains("larger than the 256 KiB limit"),
            "{e}"
        );
        std::fs::write(&big, vec![b'#'; MAX_PERSONA_BYTES as usize]).unwrap();
        assert_eq!(
            read_persona(&big, false).unwrap().len(),
            MAX_PERSONA_BYTES as usize
        );

        assert!(matches!(
            read_persona(d.path(), true),
            Err(ReadError::NotRegular)
        ));
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = read_secret(&target).unwrap_err();
        assert!(e.to_string().contains("mode 0640"), "{e}");
    }

    #[test]
    fn a_write_never_goes_through_a_planted_link() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        // links planted at the old predictable temporary name and at the target
        let target = d.path().join("p.toml");
        std::os::unix::fs::symlink(
            &victim,
            d.path().join(format!(".p.toml.tmp-{}", std::process::id())),
        )
        .unwrap();
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        write_atomically(&target, "id = \"p\"\n").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        let meta = std::fs::symlink_metadata(&target).unwrap();
        assert!(meta.is_file(), "the link was replaced by the file");
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "id = \"p\"\n");
        // nothing else left behind but the planted link
        let left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
