//! The user and group the proxy runs as. With transparent interception (`weft init`), iptables
//! exempts the connections of exactly one user (`--proxy-uid`, `-m owner --uid-owner`) or group
//! (`--proxy-gid`) from redirection: the proxy must run as that user, or every connection it
//! opens comes back into its own outbound port (a loop). `weft proxy --proxy-uid/--proxy-gid`
//! states what `weft init` was given, and the proxy refuses to start as anyone else.

/// Effective user and group IDs (those iptables' owner match sees on the proxy's sockets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunningAs {
    pub uid: u32,
    pub gid: u32,
}

impl RunningAs {
    /// This process's, from `/proc/self/status`.
    pub fn current() -> Result<Self, String> {
        let status = std::fs::read_to_string("/proc/self/status")
            .map_err(|e| format!("cannot read /proc/self/status for the effective user: {e}"))?;
        Self::parse(&status).ok_or_else(|| {
            "no Uid/Gid lines in /proc/self/status: cannot tell the effective user".into()
        })
    }

    /// `Uid:` and `Gid:` lines: real, effective, saved and filesystem IDs; the second counts.
    pub fn parse(status: &str) -> Option<Self> {
        let effective = |key: &str| -> Option<u32> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        };
        Some(Self {
            uid: effective("Uid:")?,
            gid: effective("Gid:")?,
        })
    }

    /// Whether `weft init --proxy-uid uid` / `--proxy-gid gid` exempts this user's
    /// connections (either one does when both are given); an error that says what to do when
    /// it does not.
    pub fn check(&self, uid: Option<u32>, gid: Option<u32>) -> Result<(), String> {
        if uid.is_none() && gid.is_none() {
            return Ok(());
        }
        if uid == Some(self.uid) || gid == Some(self.gid) {
            return Ok(());
        }
        let expected = match (uid, gid) {
            (Some(u), Some(g)) => format!("uid {u} or gid {g}"),
            (Some(u), None) => format!("uid {u}"),
            (None, Some(g)) => format!("gid {g}"),
            (None, None) => String::new(),
        };
        Err(format!(
            "the proxy runs as uid {} gid {}, but `weft init` exempts {expected} from redirection: its own connections would come back into it (a loop). Run `weft proxy` as {expected} (e.g. `setpriv --reuid {} --regid {} --clear-groups weft proxy ...`), or run `weft init` again with `--proxy-uid {}`",
            self.uid,
            self.gid,
            uid.unwrap_or(self.uid),
            gid.unwrap_or(self.gid),
            self.uid
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str =
        "Name:\tweft\nUid:\t1000\t2102\t2102\t2102\nGid:\t1000\t2103\t2103\t2103\n";

    #[test]
    fn the_effective_ids_are_the_second_fields() {
        assert_eq!(
            RunningAs::parse(STATUS),
            Some(RunningAs {
                uid: 2102,
                gid: 2103
            })
        );
        assert_eq!(RunningAs::parse("Name:\tx\nUid:\t0\t0\t0\t0\n"), None);
        assert_eq!(RunningAs::parse("Name:\tx\n"), None);
    }

    #[test]
    fn the_check_passes_for_the_exempt_user_or_group_and_says_what_to_do_otherwise() {
        let me = RunningAs::parse(STATUS).unwrap();
        assert!(me.check(None, None).is_ok());
        assert!(me.check(Some(2102), None).is_ok());
        assert!(me.check(None, Some(2103)).is_ok());
        assert!(me.check(Some(1), Some(2103)).is_ok());
        let e = me.check(Some(1337), None).unwrap_err();
        assert!(e.contains("runs as uid 2102 gid 2103"), "{e}");
        assert!(e.contains("exempts uid 1337"), "{e}");
        assert!(e.contains("a loop"), "{e}");
        assert!(e.contains("setpriv --reuid 1337"), "{e}");
        let e = me.check(Some(1337), Some(1338)).unwrap_err();
        assert!(e.contains("uid 1337 or gid 1338"), "{e}");
    }
}
