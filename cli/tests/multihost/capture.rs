//! A packet capture on a host's link with `tshark`, and reading it back with display filters.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use weft_runtime::child::Child;

use crate::PLAIN_PORT;
use crate::hosts::run_ok;
use crate::support::Netns;

/// A packet capture on one link, from the switch namespace.
pub struct Capture {
    tshark: Child,
    file: PathBuf,
}

impl Capture {
    /// Starts `tshark` on `link` (TCP only) and waits until it captures.
    pub fn start(switch: &Netns, link: &str, dir: &Path) -> Self {
        let file = dir.join("link-a.pcapng");
        let tshark = switch.spawn(
            &[
                "tshark",
                "-i",
                link,
                "-f",
                "tcp",
                "-w",
                file.to_str().unwrap(),
            ],
            &[],
            &dir.join("tshark.log"),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !tshark.logs().contains("Capturing on") {
            assert!(
                Instant::now() < deadline,
                "tshark did not start:\n{}",
                tshark.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Capture { tshark, file }
    }

    /// Whether the capture file holds a packet matching `filter` yet.
    fn seen(&self, filter: &str) -> bool {
        read_capture(&self.file, filter, &["frame.number"]).is_some_and(|l| !l.is_empty())
    }

    /// Makes traffic with `probe` (which says what to look for) until the capture shows it:
    /// tshark says it is capturing a little before it is.
    pub fn wait_live(&self, probe: impl Fn() -> String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let filter = probe();
            let give_up = Instant::now() + Duration::from_secs(2);
            while Instant::now() < give_up {
                if self.seen(&filter) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            assert!(
                Instant::now() < deadline,
                "the capture never saw `{filter}`:\n{}",
                self.tshark.logs()
            );
        }
    }

    /// Waits until the capture file holds a packet matching `filter` (the kernel hands
    /// captured packets over in blocks, so the newest may not be in yet).
    pub fn wait_for(&self, filter: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.seen(filter) {
            assert!(
                Instant::now() < deadline,
                "the capture never saw `{filter}`:\n{}",
                self.tshark.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the capture once it holds a packet matching `last`, and returns the file.
    pub fn stop_after(mut self, last: &str) -> PathBuf {
        self.wait_for(last);
        // SIGINT: tshark writes the rest of its file and exits.
        run_ok(&["kill", "-INT", &self.tshark.pid().to_string()]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.tshark.running() {
            assert!(Instant::now() < deadline, "tshark did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.file.clone()
    }
}

/// The packets of a capture that match a display filter, one line of `fields` each.
pub fn packets(file: &Path, filter: &str, fields: &[&str]) -> Vec<String> {
    read_capture(file, filter, fields)
        .unwrap_or_else(|| panic!("tshark could not read {} with `{filter}`", file.display()))
}

/// [`packets`], or `None` when tshark fails (a capture still being written may end in the
/// middle of a packet). B's proxy port is decoded as TLS, the skipped port as HTTP.
fn read_capture(file: &Path, filter: &str, fields: &[&str]) -> Option<Vec<String>> {
    let plain_http = format!("tcp.port=={PLAIN_PORT},http");
    let mut argv = vec![
        "tshark",
        "-r",
        file.to_str().unwrap(),
        "-d",
        "tcp.port==4143,tls",
        "-d",
        &plain_http,
        "-Y",
        filter,
        "-T",
        "fields",
    ];
    for f in fields {
        argv.extend(["-e", f]);
    }
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    if !out.status.success() {
        eprintln!(
            "tshark -Y {filter}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    Some(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect(),
    )
}
