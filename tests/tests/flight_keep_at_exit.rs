//! A window asked for with SIGUSR2 is kept even when SIGTERM follows at
//! once (issue 18): the service may exit before deja's listener task gets
//! its turn, and the end of the recording answers the request then.

use std::io::{BufRead, BufReader, Write};
use std::process::Command;
use std::time::Duration;

use deja_fixtures::kv_server::KvServer;
use deja_tests::e2e::workspace_bin;

/// The pid of `deja record`'s child (the service).
fn child_of(pid: u32) -> i32 {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .expect("reading the children of deja record");
    children
        .split_whitespace()
        .next()
        .expect("deja record runs the service")
        .parse()
        .unwrap()
}

#[test]
fn a_keep_asked_for_right_before_sigterm_is_honoured() {
    let out = tempfile::tempdir().unwrap();
    let mut record = Command::new(workspace_bin("deja"));
    record
        .args(["record", "--flight", "1", "--out"])
        .arg(out.path())
        .arg("--")
        .arg(workspace_bin("kv"))
        .args(["--listen", "127.0.0.1:0"])
        .stderr(std::fs::File::create(out.path().join("record.stderr")).unwrap());
    let mut service = KvServer::start(record).expect("kv starts");
    // One answered request: kv's main loop (and its signal handlers) runs.
    let mut client = std::net::TcpStream::connect(service.addr()).unwrap();
    client.write_all(b"GET a\n").unwrap();
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap(); // the greeting
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "NOTFOUND\n");
    drop((reader, client));

    let kv = child_of(service.id());
    // SAFETY: kill(2) on the service's pid, a child of deja record that is
    // running (it just answered).
    unsafe {
        libc::kill(kv, libc::SIGUSR2);
        libc::kill(kv, libc::SIGTERM);
    }
    let status = service
        .wait_timeout(Duration::from_secs(30))
        .unwrap()
        .expect("deja record exits once kv does");
    let stderr = std::fs::read_to_string(out.path().join("record.stderr")).unwrap();
    assert!(status.success(), "{stderr}");
    let kept: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().contains("-kept"))
        .collect();
    assert_eq!(kept.len(), 1, "{stderr}");
    assert!(stderr.contains("flight recorder kept"), "{stderr}");
}
