//! A newcomer's copy of the README: every fenced `sh` block the README marks with
//! `<!-- readme-test: run -->` runs, in order, in one shell (as if pasted into a terminal line
//! by line, continuation lines included), against the server started by the block marked
//! `<!-- readme-test: background -->` — in a fresh directory holding a copy of `proxy.toml`,
//! with `./target/release/switchyard` pointing at the binary this test run already built (no
//! second build). The shipped ports 8080 and 9090 are replaced by free ones, in the file and in
//! the commands alike (and `SWITCHYARD_ADMIN_URL` names the admin port `ctl` would otherwise
//! find at its default, 9090); nothing else is changed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const RUN: &str = "<!-- readme-test: run -->";
const BACKGROUND: &str = "<!-- readme-test: background -->";
const BOUND: Duration = Duration::from_secs(180);

#[derive(Debug)]
struct Block {
    background: bool,
    line: usize,
    text: String,
}

/// The marked blocks of `readme`, in order.
fn marked_blocks(readme: &str) -> Vec<Block> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let marker = lines[i].trim();
        if marker == RUN || marker == BACKGROUND {
            let open = i + 1;
            assert_eq!(
                lines.get(open).map(|l| l.trim()),
                Some("```sh"),
                "README line {}: a marker must be followed by a ```sh block",
                i + 1
            );
            let mut end = open + 1;
            while end < lines.len() && lines[end].trim() != "```" {
                end += 1;
            }
            out.push(Block {
                background: marker == BACKGROUND,
                line: open + 1,
                text: lines[open + 1..end].join("\n") + "\n",
            });
            i = end;
        }
        i += 1;
    }
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ports(text: &str, api: u16, admin: u16) -> String {
    text.replace(":8080", &format!(":{api}"))
        .replace(":9090", &format!(":{admin}"))
}

fn tempdir() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let p = std::env::temp_dir().join(format!("switchyard-readme-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(p.join("target/release")).unwrap();
    p
}

/// Runs `script` in bash (stdin: the script, as pasted), in `dir`; `ctl` finds the admin
/// listener at `admin` (its default is the shipped port 9090).
fn bash(dir: &Path, script: &str, log: &Path, admin: u16) -> Child {
    let mut child = Command::new("bash")
        .args(["-e", "-o", "pipefail", "-s"])
        .current_dir(dir)
        .env_remove("SWITCHYARD_ADMIN_TOKEN")
        .env("SWITCHYARD_ADMIN_URL", format!("http://127.0.0.1:{admin}"))
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(Stdio::from(
            std::fs::OpenOptions::new().append(true).open(log).unwrap(),
        ))
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    child
}

fn ready(admin: u16) -> bool {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", admin)) else {
        return false;
    };
    let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

#[test]
fn every_runnable_readme_block_works_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let blocks = marked_blocks(&readme);
    assert!(
        blocks.iter().filter(|b| b.background).count() == 1 && blocks.len() >= 4,
        "the README marks one background block and the walk-through: {blocks:?}"
    );
    let (api, admin) = (free_port(), free_port());
    let dir = tempdir();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_switchyard"),
        dir.join("target/release/switchyard"),
    )
    .unwrap();
    let toml = std::fs::read_to_string(root.join("proxy.toml")).unwrap();
    std::fs::write(dir.join("proxy.toml"), ports(&toml, api, admin)).unwrap();

    let server_log = dir.join("serve.log");
    let background: String = blocks
        .iter()
        .filter(|b| b.background)
        .map(|b| ports(&b.text, api, admin))
        .collect();
    let mut server = bash(&dir, &background, &server_log, admin);
    let started = Instant::now();
    while !ready(admin) {
        if let Some(status) = server.try_wait().unwrap() {
            panic!(
                "the README's serve command exited ({status}):\n{}",
                std::fs::read_to_string(&server_log).unwrap_or_default()
            );
        }
        assert!(
            started.elapsed() < BOUND,
            "the README's server never became ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut script = String::new();
    for b in blocks.iter().filter(|b| !b.background) {
        script.push_str(&format!("echo '=== README block at line {}'\n", b.line));
        script.push_str(&ports(&b.text, api, admin));
    }
    let log = dir.join("blocks.log");
    let mut run = bash(&dir, &script, &log, admin);
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > BOUND {
            let _ = run.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    // Stop the server the background shell started (its children, by id), then the shell.
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", server.id()))
        .unwrap_or_default();
    for pid in children.split_whitespace() {
        let _ = Command::new("kill").args(["-KILL", pid]).status();
    }
    let _ = server.kill();
    let _ = server.wait();
    let serve_log = std::fs::read_to_string(&server_log).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "README blocks failed ({status:?}):\n{output}\n--- server:\n{serve_log}"
    );
    // What the walk-through's comments promise.
    assert!(
        output.contains("x-switchyard-variation: control"),
        "{output}"
    );
    assert!(
        output.contains("x-switchyard-variation: treatment"),
        "{output}"
    );
    assert!(
        output.contains("x-switchyard-identity: body:user"),
        "{output}"
    );
    assert!(output.contains("switchyard_requests_total"), "{output}");
    assert!(output.contains("\"accepted\""), "{output}");
    // The shipped agent: the kill switch and a floor under its policy's are refused.
    assert!(
        output.contains("forbids the kill switch") && output.contains("floor at 0.05 or above"),
        "{output}"
    );
    // The shipped eval: at least a fifth of the 30 answers judged when the poll ends.
    let scored = output
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "switchyard_eval_requests_total{eval=\"groundedness\",outcome=\"scored\"} ",
            )
        })
        .and_then(|n| n.trim().parse::<u64>().ok());
    assert!(scored.is_some_and(|n| n >= 6), "{scored:?}\n{output}");
    // The shipped bandit: served, an epoch held for too few users, replayed bit for bit.
    assert!(output.contains("\"metric\":\"task_completed\""), "{output}");
    assert!(output.contains("\"why\":\"too_few_users\""), "{output}");
    assert!(
        output.contains("support-assistant epoch 1 (seed")
            && output.contains("replay MATCHES the record bit for bit"),
        "{output}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
