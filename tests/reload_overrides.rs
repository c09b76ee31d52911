//! Safe reloads and runtime overrides through HTTP: an empty file and a file that would lock
//! the admin API out are refused (and audited); every reload's audit entry says what changed;
//! the file watch applies a file only once it settled (half-written files never, Kubernetes'
//! ConfigMap symlink swap yes); overrides win over the file in both directions, survive reloads
//! and restarts, name their author, and go only when cleared.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/http.rs"]
mod client;
#[path = "support/served.rs"]
mod served;

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{json, Value};

use served::{eventually, Dir, Served};

const WAIT: Duration = Duration::from_secs(20);

const MOCK: &str = "[providers.mock]\nkind = \"mock\"\nlatency = \"0ms\"\n";

/// A flag with variations `a` and `b`, everyone on `a`.
fn flag(key: &str, extra_a: &str, flag_extra: &str) -> String {
    format!(
        "[flags.{key}]\noff_variation = \"b\"\n{flag_extra}\n[flags.{key}.variations.a]\nprovider = \"mock\"\nmodel_id = \"{key}-a\"\n{extra_a}\n[flags.{key}.variations.b]\nprovider = \"mock\"\nmodel_id = \"{key}-b\"\n[[flags.{key}.rules]]\nid = \"all\"\nallocation = [{{ variation = \"a\", end = 10000 }}]\n"
    )
}

fn write(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn last_reload(audit: &[Value]) -> Value {
    audit
        .iter()
        .find(|e| e["action"] == "reload" || e["action"] == "reload_refused")
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn empty_and_tokenless_files_are_refused_and_every_reload_is_audited_with_a_summary() {
    let dir = Dir::new("reload-safe");
    let (var, tok) = served::token("reload-safe");
    let head = served::header(&dir.0, &var);
    let server = "[server]\nreload_check_interval = \"0s\"\n";
    let path = dir.0.join("proxy.toml");
    let v1 = format!(
        "{server}{head}{MOCK}{}{}",
        flag("f", "", ""),
        flag("g", "", "")
    );
    write(&path, &v1);
    let p = Served::start(&path, &tok).await;

    // An empty file: refused, the old config keeps serving, /readyz stays ready with a reason.
    write(&path, "");
    let r = p.admin(Method::POST, "/admin/reload", None).await;
    assert_eq!(r.status.as_u16(), 422, "{}", r.text());
    assert!(
        r.text().contains("no flag, no [passthrough]"),
        "{}",
        r.text()
    );
    assert_eq!(p.chat("f", "u1").await.status, StatusCode::OK);
    let ready = client::get(&format!("http://{}/readyz", p.admin_addr)).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert!(!ready.text().contains("proxy.toml"), "{}", ready.text());
    let refused = last_reload(&p.audit(5).await);
    assert_eq!(refused["action"], "reload_refused", "{refused}");
    assert!(refused["after"]["errors"][0]
        .as_str()
        .unwrap()
        .contains("no flag"));

    // A file without a usable admin token while the running one has one: refused.
    let tokenless = format!("{server}{MOCK}{}", flag("f", "", ""));
    write(&path, &tokenless);
    let r = p.admin(Method::POST, "/admin/reload", None).await;
    assert_eq!(r.status.as_u16(), 422, "{}", r.text());
    assert!(r.text().contains("admin.tokens"), "{}", r.text());
    // The admin API still answers: the token still works.
    assert_eq!(
        p.admin(Method::GET, "/admin/flags", None).await.status,
        StatusCode::OK
    );

    // A valid change: the audit entry says what changed.
    let v2 = format!(
        "{server}{head}{MOCK}{}{}",
        flag("f", "temperature = 0.5", ""),
        flag("h", "", "")
    );
    write(&path, &v2);
    let r = p.admin(Method::POST, "/admin/reload", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let entry = last_reload(&p.audit(5).await);
    assert_eq!(entry["action"], "reload", "{entry}");
    assert_eq!(entry["after"]["flags_added"], json!(["h"]), "{entry}");
    assert_eq!(entry["after"]["flags_removed"], json!(["g"]), "{entry}");
    assert_eq!(entry["after"]["flags_changed"], json!(["f"]), "{entry}");
    assert_eq!(entry["actor"], "ops");
}

#[tokio::test]
async fn the_watch_applies_a_file_once_it_settled_and_follows_a_configmap_symlink_swap() {
    let dir = Dir::new("reload-watch");
    let (var, tok) = served::token("reload-watch");
    let head = served::header(&dir.0, &var);
    let server = "[server]\nreload_check_interval = \"100ms\"\nreload_settle = \"3s\"\n";
    // Kubernetes' layout: proxy.toml -> ..data/proxy.toml, ..data -> a timestamped directory.
    let v1_dir = dir.0.join("..2026_v1");
    std::fs::create_dir_all(&v1_dir).unwrap();
    let v1 = format!(
        "{server}{head}{MOCK}{}{}",
        flag("f", "", ""),
        flag("g", "", "")
    );
    std::fs::write(v1_dir.join("proxy.toml"), &v1).unwrap();
    std::os::unix::fs::symlink("..2026_v1", dir.0.join("..data")).unwrap();
    let path = dir.0.join("proxy.toml");
    std::os::unix::fs::symlink("..data/proxy.toml", &path).unwrap();
    let p = Served::start(&path, &tok).await;
    assert_eq!(p.models().await, ["f", "g"]);

    // A writer caught half-way: the first part (valid on its own, without `g`) stays for a
    // moment, then the rest arrives. The half file is never applied.
    let full = format!(
        "{server}{head}{MOCK}{}{}{}",
        flag("f", "", ""),
        flag("g", "", ""),
        flag("h", "", "")
    );
    let half = format!("{server}{head}{MOCK}{}", flag("f", "", ""));
    let target = v1_dir.join("proxy.toml");
    std::fs::write(&target, &half).unwrap();
    // A slow writer (well below the 3 s settle time): the watch sees the half file meanwhile.
    tokio::time::sleep(Duration::from_millis(400)).await;
    std::fs::write(&target, &full).unwrap();
    let pr = &p;
    eventually(
        WAIT,
        "h served after the file settled",
        move || async move { (pr.models().await == ["f", "g", "h"]).then_some(()) },
    )
    .await;
    let reloads: Vec<Value> = p
        .audit(20)
        .await
        .into_iter()
        .filter(|e| e["action"] == "reload")
        .collect();
    assert_eq!(
        reloads.len(),
        1,
        "one reload, of the whole file: {reloads:?}"
    );
    assert_eq!(reloads[0]["after"]["flags_removed"], json!([]));
    assert_eq!(reloads[0]["after"]["flags_added"], json!(["h"]));
    assert_eq!(reloads[0]["actor"], "file-watch");

    // The ConfigMap update: a new directory, then the `..data` link swapped atomically.
    let v2_dir = dir.0.join("..2026_v2");
    std::fs::create_dir_all(&v2_dir).unwrap();
    std::fs::write(
        v2_dir.join("proxy.toml"),
        format!("{server}{head}{MOCK}{}", flag("k", "", "")),
    )
    .unwrap();
    std::os::unix::fs::symlink("..2026_v2", dir.0.join("..data_tmp")).unwrap();
    std::fs::rename(dir.0.join("..data_tmp"), dir.0.join("..data")).unwrap();
    eventually(WAIT, "the swapped ConfigMap served", move || async move {
        (pr.models().await == ["k"]).then_some(())
    })
    .await;
}

/// The three overrides of the test below are in force.
async fn check(p: &Served) {
    assert_eq!(fallback_header(p, "f").await, None, "f lifted");
    assert_eq!(fallback_header(p, "g").await, None, "g enabled");
    assert_eq!(
        fallback_header(p, "h").await.as_deref(),
        Some("kill_switch"),
        "h off"
    );
}

async fn fallback_header(p: &Served, flag: &str) -> Option<String> {
    let r = p.chat(flag, "u1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.header("x-switchyard-fallback")
}

#[tokio::test]
async fn overrides_win_both_ways_survive_reloads_and_restarts_and_go_only_when_cleared() {
    let dir = Dir::new("overrides");
    let (var, tok) = served::token("overrides");
    let head = served::header(&dir.0, &var);
    let server = "[server]\nreload_check_interval = \"0s\"\n";
    let path = dir.0.join("proxy.toml");
    // f: the file forces rule-based answers on `a`; g: the file disables it; h: enabled.
    let file = |with_g: bool, comment: &str| {
        format!(
            "{server}{head}{MOCK}# {comment}\n{}{}{}",
            flag("f", "force_fallback = true", ""),
            if with_g {
                flag("g", "", "enabled = false")
            } else {
                String::new()
            },
            flag("h", "", "")
        )
    };
    write(&path, &file(true, "v1"));
    let mut p = Served::start(&path, &tok).await;
    assert_eq!(fallback_header(&p, "f").await.as_deref(), Some("forced"));
    assert_eq!(
        fallback_header(&p, "g").await.as_deref(),
        Some("kill_switch")
    );

    // Lift what the file forces; enable what the file disables; disable what it enables.
    let r = p
        .admin(
            Method::PUT,
            "/admin/flags/f/fallback",
            Some(json!({"forced": false, "variation": "a"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let audit = &r.json()["audit"];
    assert_ne!(
        audit["before"], audit["after"],
        "the audit shows the change: {audit}"
    );
    assert_eq!(audit["after"]["lifted_variations"], json!(["a"]), "{audit}");
    p.admin(
        Method::PUT,
        "/admin/flags/g/enabled",
        Some(json!({"enabled": true})),
    )
    .await;
    p.admin(
        Method::PUT,
        "/admin/flags/h/enabled",
        Some(json!({"enabled": false})),
    )
    .await;
    check(&p).await;
    // The effective state says where each value comes from.
    let f = p.admin(Method::GET, "/admin/flags/f", None).await.json();
    assert_eq!(
        f["sources"]["forced_variations"]["a"],
        json!({"value": false, "from": "override", "by": "ops"}),
        "{f}"
    );
    assert_eq!(f["sources"]["forced_variations"]["b"]["from"], "file");
    let g = p.admin(Method::GET, "/admin/flags/g", None).await.json();
    assert_eq!(
        g["sources"]["enabled"],
        json!({"value": true, "from": "override", "by": "ops"})
    );

    // A reload keeps them; so does a restart.
    write(&path, &file(true, "v2"));
    assert_eq!(
        p.admin(Method::POST, "/admin/reload", None).await.status,
        StatusCode::OK
    );
    check(&p).await;
    assert!(p.stop(WAIT).await);
    p = Served::start(&path, &tok).await;
    check(&p).await;

    // An override naming a flag the reloaded file dropped waits for it to come back.
    write(&path, &file(false, "v3"));
    assert_eq!(
        p.admin(Method::POST, "/admin/reload", None).await.status,
        StatusCode::OK
    );
    assert_eq!(p.chat("g", "u1").await.status, StatusCode::NOT_FOUND);
    write(&path, &file(true, "v4"));
    assert_eq!(
        p.admin(Method::POST, "/admin/reload", None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        fallback_header(&p, "g").await,
        None,
        "g's override is back in force"
    );

    // Cleared by an operator: back to the file, audited.
    let r = p
        .admin(
            Method::DELETE,
            "/admin/flags/f/overrides?field=variation:a",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["audit"]["action"], "clear_override");
    assert_eq!(fallback_header(&p, "f").await.as_deref(), Some("forced"));
    // The CLI: `ctl enable g --clear` and `ctl clear h`.
    let bin = env!("CARGO_BIN_EXE_switchyard");
    for args in [
        vec!["ctl", "enable", "g", "--clear"],
        vec!["ctl", "clear", "h"],
    ] {
        let mut cmd = std::process::Command::new(bin);
        cmd.args(&args)
            .env("SWITCHYARD_ADMIN_URL", format!("http://{}", p.admin_addr))
            .env("SWITCHYARD_ADMIN_TOKEN", &tok);
        // The proxy runs on this test's runtime: wait for the CLI off it.
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        fallback_header(&p, "g").await.as_deref(),
        Some("kill_switch")
    );
    assert_eq!(fallback_header(&p, "h").await, None);
    let g = p.admin(Method::GET, "/admin/flags/g", None).await.json();
    assert_eq!(
        g["sources"]["enabled"],
        json!({"value": false, "from": "file"})
    );
    let bad = p
        .admin(
            Method::DELETE,
            "/admin/flags/f/overrides?field=colour",
            None,
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text());
}
