//! Files that hold keys (the sealing key, the onion services' keys): read
//! only when they are what a key file must be, so that a file someone else
//! planted where the mote looks is refused instead of used.

use std::io::Read;
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags};
use zeroize::Zeroizing;

/// Read the key file at `path` — not through a symbolic link, a regular
/// file, owned by this process's effective user, with no permission for
/// group or others — or `Ok(None)` when there is none. Anything else is an
/// error of kind `PermissionDenied` that says why: a key another user could
/// write (or read) is not a secret of this mote's, and a key written by
/// someone else would let them read what it seals.
pub fn read_private(path: &Path) -> std::io::Result<Option<Zeroizing<Vec<u8>>>> {
    let refuse = |why: String| {
        std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("refusing the key file {}: {why}", path.display()),
        )
    };
    let fd = match rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(rustix::io::Errno::LOOP) => return Err(refuse("it is a symbolic link".into())),
        Err(e) => return Err(e.into()),
    };
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(refuse("not a regular file".into()));
    }
    let me = rustix::process::geteuid().as_raw();
    if st.st_uid != me {
        return Err(refuse(format!(
            "owned by uid {}, not by this process's user (uid {me})",
            st.st_uid
        )));
    }
    let mode = st.st_mode & 0o777;
    if mode & 0o077 != 0 {
        return Err(refuse(format!(
            "mode {mode:04o} lets group or others at it (chmod 600)"
        )));
    }
    let mut data = Zeroizing::new(Vec::new());
    std::fs::File::from(fd).read_to_end(&mut data)?;
    Ok(Some(data))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_a_private_regular_file_of_ours_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        assert!(read_private(&p).unwrap().is_none());
        std::fs::write(&p, b"secret").unwrap();
        for (mode, ok) in [
            (0o600, true),
            (0o400, true),
            (0o640, false),
            (0o604, false),
            (0o620, false),
        ] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let r = read_private(&p);
            assert_eq!(r.is_ok(), ok, "{mode:o}: {r:?}");
            if !ok {
                let e = r.unwrap_err();
                assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
                assert!(e.to_string().contains("chmod 600"), "{e}");
            }
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_private(&p).unwrap().unwrap().as_slice(), b"secret");
        // A link to it, even to a good file, and a dangling one.
        let l = dir.path().join("link");
        std::os::unix::fs::symlink(&p, &l).unwrap();
        assert!(read_private(&l)
            .unwrap_err()
            .to_string()
            .contains("symbolic link"));
        let d = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nothing"), &d).unwrap();
        assert!(read_private(&d).is_err());
        // Not a regular file.
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(read_private(&sub)
            .unwrap_err()
            .to_string()
            .contains("regular file"));
    }
}
