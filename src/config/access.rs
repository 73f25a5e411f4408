//! What to say when a file the configuration names cannot be read for want of permission: in a
//! container the proxy runs as an unprivileged user (uid 65532 in the image), and a secret file
//! as usually written (root's, mode 0600) is closed to it.

use std::io;

/// The process's effective user id, from `/proc` (no `unsafe` call needed); `None` where there
/// is no `/proc`.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| line.strip_prefix("Uid:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// What to append to a "cannot read" message for `error`: empty, or, when permission was denied
/// to a process that is not root, which uid it runs as and the ways to let it read the file.
pub fn hint(error: &io::Error) -> String {
    hint_for(error.kind(), effective_uid())
}

fn hint_for(kind: io::ErrorKind, uid: Option<u32>) -> String {
    match uid {
        Some(uid) if uid != 0 && kind == io::ErrorKind::PermissionDenied => format!(
            "; the proxy runs as uid {uid}, not root: make the file readable by uid {uid} \
             (chown {uid} FILE && chmod 0400 FILE; a bind mount or a compose file secret keeps the \
             file's owner and mode), or mount it as a podman secret with uid={uid},mode=0400"
        ),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denied_read_says_which_uid_and_how_to_fix_it() {
        let hint = hint_for(io::ErrorKind::PermissionDenied, Some(65532));
        assert_eq!(
            hint,
            "; the proxy runs as uid 65532, not root: make the file readable by uid 65532 (chown 65532 FILE && \
             chmod 0400 FILE; a bind mount or a compose file secret keeps the file's owner and mode), or mount it \
             as a podman secret with uid=65532,mode=0400"
        );
        assert_eq!(hint_for(io::ErrorKind::PermissionDenied, Some(0)), "", "root is denied for other reasons");
        assert_eq!(hint_for(io::ErrorKind::PermissionDenied, None), "");
        assert_eq!(hint_for(io::ErrorKind::NotFound, Some(65532)), "");
    }

    #[test]
    fn the_uid_is_the_processs_own() {
        use std::os::unix::fs::MetadataExt;
        // A file this process creates is owned by its effective uid.
        let path = std::env::temp_dir().join(format!("uem-proxy-uid-{}", fastrand::u64(..)));
        std::fs::write(&path, "").unwrap();
        let owner = std::fs::metadata(&path).unwrap().uid();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(effective_uid(), Some(owner));
    }
}
