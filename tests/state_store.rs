//! The runtime-state store through its public API, on SQLite and on PostgreSQL.
//!
//! PostgreSQL tests connect to `SWITCHYARD_TEST_PG` (default
//! `postgres://postgres@127.0.0.1:5432/test`), each in a schema of its own so they run in
//! parallel and can be re-run; they fail (never skip) when PostgreSQL is unreachable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use switchyard::state::{
    AuditEntry, Change, Exposure, FeedbackRow, FlagOverrides, RuntimeState, StateError, Store,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

// ---------------------------------------------------------------------------------------------
// Fixtures

#[path = "support/db.rs"]
mod db;

use db::{open, pg_base_url, unique, Db};

fn enabled(flag: &str, on: bool) -> Change {
    Change::SetEnabled {
        flag: flag.into(),
        enabled: on,
    }
}

fn assert_rfc3339_ms(at: &str) {
    let b = at.as_bytes();
    assert_eq!(b.len(), 24, "{at}");
    for (i, c) in b.iter().enumerate() {
        let want_digit = !matches!(i, 4 | 7 | 10 | 13 | 16 | 19 | 23);
        assert_eq!(c.is_ascii_digit(), want_digit, "{at}: byte {i}");
    }
    assert_eq!(
        (b[4], b[7], b[10], b[13], b[16], b[19], b[23]),
        (b'-', b'-', b'T', b':', b':', b'.', b'Z'),
        "{at}"
    );
    assert!(at.starts_with("20"), "{at}");
}

// ---------------------------------------------------------------------------------------------
// Scenarios, run on both backends

async fn round_trip(url: &str) {
    let store = open(url).await;
    assert_eq!(store.load().await.unwrap(), RuntimeState::default());

    let changes = [
        enabled("support", false),
        Change::SetForcedFallback {
            flag: "support".into(),
            variation: None,
            forced: true,
        },
        Change::SetForcedFallback {
            flag: "support".into(),
            variation: Some("treatment".into()),
            forced: true,
        },
        Change::SetRolloutStage {
            flag: "support".into(),
            rule: "ab".into(),
            stage: 2,
            at_ms: 1_700_000_000_000,
        },
        Change::SetRolloutHeld {
            flag: "support".into(),
            rule: "ab".into(),
            held: true,
        },
        enabled("search", true),
    ];
    for change in &changes {
        store.apply(change, "ops", None).await.unwrap();
    }
    // A note is audited but changes neither the state nor the version.
    store
        .apply(
            &Change::Note {
                flag: Some("support".into()),
                action: "reload".into(),
                detail: json!({"ok": true}),
            },
            "reload",
            None,
        )
        .await
        .unwrap();

    let mut support = FlagOverrides {
        enabled: Some(false),
        force_fallback: Some(true),
        ..FlagOverrides::default()
    };
    support.forced_variations.insert("treatment".into());
    support.rollout_stage.insert("ab".into(), 2);
    support.rollout_held.insert("ab".into());
    support
        .stage_started_at_ms
        .insert("ab".into(), 1_700_000_000_000);
    // Who set each field is kept with it.
    for field in [
        "enabled",
        "force_fallback",
        "variation:treatment",
        "stage:ab",
        "held:ab",
    ] {
        support.set_by.insert(field.into(), "ops".into());
    }
    let mut search = FlagOverrides {
        enabled: Some(true),
        ..FlagOverrides::default()
    };
    search.set_by.insert("enabled".into(), "ops".into());
    let want = RuntimeState {
        version: 6,
        flags: BTreeMap::from([
            ("search".into(), search.clone()),
            ("support".into(), support),
        ]),
    };
    assert_eq!(store.load().await.unwrap(), want);

    // Clearing a flag takes it back to the config: it disappears from the state.
    store
        .apply(
            &Change::ClearFlag {
                flag: "support".into(),
            },
            "ops",
            None,
        )
        .await
        .unwrap();
    // Lifting the only override also leaves nothing behind.
    store
        .apply(
            &Change::SetForcedFallback {
                flag: "chat".into(),
                variation: Some("v".into()),
                forced: true,
            },
            "ops",
            None,
        )
        .await
        .unwrap();
    store
        .apply(
            &Change::SetForcedFallback {
                flag: "chat".into(),
                variation: Some("v".into()),
                forced: false,
            },
            "ops",
            None,
        )
        .await
        .unwrap();
    // Lifting is an override of its own (it wins over a file that forces the variation) …
    let state = store.load().await.unwrap();
    assert_eq!(state.version, 9);
    assert!(state.flags["chat"].lifted_variations.contains("v"));
    // … until it is cleared: then the flag runs as configured again.
    store
        .apply(
            &Change::ClearField {
                flag: "chat".into(),
                field: "variation:v".into(),
            },
            "ops",
            None,
        )
        .await
        .unwrap();
    let state = store.load().await.unwrap();
    assert_eq!(state.version, 10);
    assert_eq!(state.flags, BTreeMap::from([("search".into(), search)]));
}

async fn audit_order(url: &str) {
    let store = open(url).await;
    let mut applied: Vec<AuditEntry> = Vec::new();
    let steps = [
        (enabled("a", false), "alice", Some("incident 42")),
        (enabled("b", false), "bob", None),
        (enabled("a", true), "alice", Some("resolved")),
        (
            Change::Note {
                flag: None,
                action: "reload".into(),
                detail: json!({"file": "proxy.toml"}),
            },
            "reload",
            None,
        ),
        (
            Change::SetRolloutHeld {
                flag: "a".into(),
                rule: "r".into(),
                held: true,
            },
            "bob",
            None,
        ),
    ];
    for (change, actor, reason) in &steps {
        let entry = store.apply(change, actor, *reason).await.unwrap();
        assert_eq!(entry.actor, *actor);
        assert_eq!(entry.action, change.action());
        assert_eq!(entry.flag.as_deref(), change.flag());
        assert_eq!(entry.reason.as_deref(), *reason);
        assert_rfc3339_ms(&entry.at);
        applied.push(entry);
    }

    // Everything, newest first, exactly as `apply` returned it.
    let all = store.audit(None, 100).await.unwrap();
    let mut newest_first = applied.clone();
    newest_first.reverse();
    assert_eq!(all, newest_first);
    assert!(all.windows(2).all(|w| w[0].id > w[1].id));
    assert!(all.windows(2).all(|w| w[0].at >= w[1].at));

    // Filtered by flag, and limited.
    let a = store.audit(Some("a"), 100).await.unwrap();
    assert_eq!(
        a.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![applied[4].id, applied[2].id, applied[0].id]
    );
    let a2 = store.audit(Some("a"), 2).await.unwrap();
    assert_eq!(a2, a[..2].to_vec());
    assert_eq!(
        store.audit(None, 1).await.unwrap(),
        vec![applied[4].clone()]
    );
    // Limits are clamped to 1..=1000.
    assert_eq!(store.audit(None, 0).await.unwrap().len(), 1);
    assert_eq!(store.audit(None, 5_000).await.unwrap().len(), 5);
    assert!(store.audit(Some("nope"), 10).await.unwrap().is_empty());
}

async fn before_after(url: &str) {
    let store = open(url).await;
    let e = store
        .apply(&enabled("f", false), "ops", None)
        .await
        .unwrap();
    assert_eq!((e.before, e.after), (json!({}), json!({"enabled": false})));

    let e = store
        .apply(
            &Change::SetRolloutStage {
                flag: "f".into(),
                rule: "r1".into(),
                stage: 3,
                at_ms: 1_795_608_062_345,
            },
            "ops",
            Some("gate passed"),
        )
        .await
        .unwrap();
    assert_eq!(e.before, json!({"enabled": false}));
    assert_eq!(
        e.after,
        json!({"enabled": false, "rollout_stage": {"r1": 3}, "stage_started_at_ms": {"r1": 1_795_608_062_345u64}})
    );

    let e = store
        .apply(
            &Change::SetForcedFallback {
                flag: "f".into(),
                variation: Some("treatment".into()),
                forced: true,
            },
            "ops",
            None,
        )
        .await
        .unwrap();
    assert_eq!(e.after["forced_variations"], json!(["treatment"]));

    let e = store
        .apply(&Change::ClearFlag { flag: "f".into() }, "ops", None)
        .await
        .unwrap();
    assert_eq!(e.action, "clear_overrides");
    assert_eq!(e.before["rollout_stage"], json!({"r1": 3}));
    assert_eq!(e.after, json!({}));

    let detail = json!({"alert": "treatment-errors", "level": "warning", "value": 0.07});
    let e = store
        .apply(
            &Change::Note {
                flag: Some("f".into()),
                action: "alert_notified".into(),
                detail: detail.clone(),
            },
            "alerts",
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        (e.action.as_str(), e.before, e.after),
        ("alert_notified", json!(null), detail)
    );

    // The stored JSON reads back identically.
    let stored = store.audit(Some("f"), 10).await.unwrap();
    assert_eq!(stored.len(), 5);
    assert_eq!(
        stored[1].before["stage_started_at_ms"],
        json!({"r1": 1_795_608_062_345u64})
    );
}

/// 50 changes to one flag, each touching a different field, from two actors through two
/// stores at once: none may be lost, and the audit log must chain (each entry's `before` is the
/// previous entry's `after`).
async fn concurrent_changes(url: &str) {
    let stores = [open(url).await, open(url).await];
    let mut tasks = JoinSet::new();
    for i in 0..50u32 {
        let store = stores[i as usize % 2].clone();
        let actor = if i % 2 == 0 { "alice" } else { "bob" };
        let change = match i % 3 {
            0 => Change::SetRolloutStage {
                flag: "shared".into(),
                rule: format!("r{i}"),
                stage: i,
                at_ms: 1_000 + u64::from(i),
            },
            1 => Change::SetRolloutHeld {
                flag: "shared".into(),
                rule: format!("h{i}"),
                held: true,
            },
            _ => Change::SetForcedFallback {
                flag: "shared".into(),
                variation: Some(format!("v{i}")),
                forced: true,
            },
        };
        tasks.spawn(async move {
            let entry = store.apply(&change, actor, Some("concurrency")).await;
            (change, actor, entry)
        });
    }
    let mut want = FlagOverrides::default();
    while let Some(done) = tasks.join_next().await {
        let (change, actor, entry) = done.unwrap();
        if let Err(e) = entry {
            panic!("{change:?}: {e}");
        }
        change.apply_by(&mut want, actor);
    }
    assert_eq!(
        want.rollout_stage.len() + want.rollout_held.len() + want.forced_variations.len(),
        50
    );

    let state = open(url).await.load().await.unwrap();
    assert_eq!(state.version, 50);
    assert_eq!(state.flags.get("shared"), Some(&want));

    let mut log = stores[1].audit(Some("shared"), 1000).await.unwrap();
    assert_eq!(log.len(), 50);
    assert_eq!(log.iter().filter(|e| e.actor == "alice").count(), 25);
    log.reverse();
    assert_eq!(log[0].before, json!({}));
    for pair in log.windows(2) {
        assert_eq!(
            pair[1].before, pair[0].after,
            "entry {} does not follow {}",
            pair[1].id, pair[0].id
        );
    }
    // The audit shows the fields; who set them is the entry's actor.
    let mut fields = serde_json::to_value(&want).unwrap();
    fields.as_object_mut().unwrap().remove("set_by");
    assert_eq!(log[49].after, fields);
}

async fn durable(url: &str) {
    {
        let store = open(url).await;
        store
            .apply(&enabled("kill-me", false), "ops", Some("incident"))
            .await
            .unwrap();
    }
    let store = open(url).await;
    let state = store.load().await.unwrap();
    assert_eq!(state.version, 1);
    assert_eq!(state.flags["kill-me"].enabled, Some(false));
    let log = store.audit(None, 10).await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].reason.as_deref(), Some("incident"));
}

/// Several stores opening a fresh database at the same moment all succeed (the schema is
/// created once).
async fn simultaneous_opens(url: &str) {
    let mut tasks = JoinSet::new();
    for _ in 0..4 {
        let url = url.to_owned();
        tasks.spawn(async move { Store::open(&url).await.map(|_| ()) });
    }
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done.unwrap() {
            panic!("simultaneous open: {e}");
        }
    }
    let store = open(url).await;
    store
        .apply(&enabled("x", false), "ops", None)
        .await
        .unwrap();
    assert_eq!(store.load().await.unwrap().version, 1);
}

/// `b` is told about `a`'s changes within `within`, but not about its own, nor about notes.
async fn subscription_sees_other_store(url: &str, within: Duration) {
    let a = open(url).await;
    let b = open(url).await;
    let mut rx = b.subscribe();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!rx.has_changed().unwrap(), "signal without any change");

    a.apply(&enabled("f", false), "alice", None).await.unwrap();
    let started = Instant::now();
    tokio::time::timeout(within, rx.changed())
        .await
        .unwrap_or_else(|_| panic!("no signal within {within:?}"))
        .unwrap();
    eprintln!("{}: signalled after {:?}", b.kind(), started.elapsed());
    assert_eq!(b.load().await.unwrap().flags["f"].enabled, Some(false));
    rx.borrow_and_update();

    b.apply(&enabled("f", true), "bob", None).await.unwrap();
    a.apply(
        &Change::Note {
            flag: None,
            action: "reload".into(),
            detail: json!(null),
        },
        "reload",
        None,
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert!(
        !rx.has_changed().unwrap(),
        "signalled for its own change or a note"
    );

    // A second subscriber on the same store shares the signal.
    let mut rx2 = b.subscribe();
    a.apply(&enabled("f", false), "alice", None).await.unwrap();
    tokio::time::timeout(within, rx2.changed())
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(within, rx.changed())
        .await
        .unwrap()
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// SQLite

#[tokio::test]
async fn sqlite_round_trip() {
    let db = Db::sqlite("rt");
    round_trip(&db.url()).await;
    db.cleanup().await;
}

#[tokio::test]
async fn sqlite_audit_newest_first_filter_limit() {
    let db = Db::sqlite("audit");
    audit_order(&db.url()).await;
    db.cleanup().await;
}

#[tokio::test]
async fn sqlite_before_after_json() {
    let db = Db::sqlite("ba");
    before_after(&db.url()).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_concurrent_changes_are_never_lost() {
    let db = Db::sqlite("conc");
    concurrent_changes(&db.url()).await;
    db.cleanup().await;
}

#[tokio::test]
async fn sqlite_changes_survive_reopening() {
    let db = Db::sqlite("dur");
    durable(&db.url()).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_simultaneous_opens_create_the_schema_once() {
    let db = Db::sqlite("open");
    simultaneous_opens(&db.url()).await;
    db.cleanup().await;
}

#[tokio::test]
async fn sqlite_subscription_sees_another_store_within_2s() {
    let db = Db::sqlite("sub");
    subscription_sees_other_store(&db.url(), Duration::from_secs(2)).await;
    db.cleanup().await;
}

#[tokio::test]
async fn sqlite_in_memory() {
    let store = open("sqlite::memory:").await;
    assert_eq!(store.kind(), "sqlite");
    store
        .apply(&enabled("f", false), "ops", None)
        .await
        .unwrap();
    assert_eq!(store.load().await.unwrap().version, 1);
    // `sqlite://PATH` is accepted too.
    let db = Db::sqlite("slashes");
    let Db::Sqlite { dir } = &db else {
        unreachable!()
    };
    let store = open(&format!("sqlite://{}", dir.join("s.db").display())).await;
    store
        .apply(&enabled("f", false), "ops", None)
        .await
        .unwrap();
    assert!(dir.join("s.db").exists());
    db.cleanup().await;
}

fn expect_storage_error(result: Result<Store, StateError>, path: &str) -> String {
    match result {
        Err(StateError::Storage(msg)) | Err(StateError::Unavailable(msg)) => {
            assert!(msg.contains(path), "message should name {path}: {msg}");
            msg
        }
        Err(other) => panic!("{path}: unexpected error kind: {other}"),
        Ok(_) => panic!("{path}: opened an unwritable store"),
    }
}

#[tokio::test]
async fn sqlite_unwritable_paths_give_clear_errors() {
    // A directory that does not exist (under /proc, where nothing can be created).
    let msg = expect_storage_error(
        Store::open("sqlite:/proc/nonexistent/x.db").await,
        "/proc/nonexistent/x.db",
    );
    assert!(msg.contains("directory"), "{msg}");

    // A missing parent directory in a normal place.
    let missing = std::env::temp_dir().join(unique("missing")).join("x.db");
    let path = missing.display().to_string();
    let msg = expect_storage_error(Store::open(&format!("sqlite:{path}")).await, &path);
    assert!(msg.contains("does the directory exist"), "{msg}");

    // A directory nobody may create files in: sysfs refuses even root.
    let msg = expect_storage_error(
        Store::open("sqlite:/sys/switchyard-state.db").await,
        "/sys/switchyard-state.db",
    );
    eprintln!("/sys: {msg}");

    // A directory made read-only with chmod 0555. Root ignores directory permissions, so when
    // the tests run as root the file gets created anyway; the /proc and /sys cases above cover
    // that situation.
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(unique("ro"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    let probe_writable = std::fs::write(dir.join("probe"), b"x").is_ok();
    let path = dir.join("state.db").display().to_string();
    let result = Store::open(&format!("sqlite:{path}")).await;
    if probe_writable {
        eprintln!("running as root: chmod 0555 does not stop writes; relying on /proc and /sys");
        assert!(result.is_ok());
    } else {
        expect_storage_error(result, &path);
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The schema of migration 1 (the first release), as it shipped: a database created by it is
/// upgraded in place when a newer build opens it.
const SQLITE_SCHEMA_V1: &str = r#"
    CREATE TABLE switchyard_meta (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL);
    INSERT INTO switchyard_meta (id, version) VALUES (1, 7);
    CREATE TABLE switchyard_flag_state (
        flag TEXT PRIMARY KEY, overrides TEXT NOT NULL, updated_at TEXT NOT NULL);
    CREATE TABLE switchyard_audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, actor TEXT NOT NULL,
        action TEXT NOT NULL, flag TEXT, "before" TEXT NOT NULL, "after" TEXT NOT NULL,
        reason TEXT);
    CREATE INDEX switchyard_audit_flag ON switchyard_audit (flag, id);
    INSERT INTO switchyard_flag_state VALUES ('f', '{"enabled":false}', '2026-01-01T00:00:00.000Z');
    PRAGMA user_version = 1;
"#;

/// Exposures and feedback work on an upgraded database, and its old state is intact.
async fn assert_upgraded(store: &Store) {
    let state = store.load().await.unwrap();
    assert_eq!(state.version, 7);
    assert_eq!(state.flags["f"].enabled, Some(false));
    store
        .record_exposures(&[Exposure {
            flag: "f".into(),
            variation: "on".into(),
            rule: None,
            user: "u".into(),
            request_id: "q".into(),
            at_ms: 1,
            repeat: false,
        }])
        .await
        .unwrap();
    assert_eq!(
        store.exposure_counts("f", None).await.unwrap(),
        (vec![("on".to_owned(), 1)], 0)
    );
    let row = FeedbackRow {
        event_id: "e".into(),
        flag: "f".into(),
        variation: "on".into(),
        user: "u".into(),
        metric: "m".into(),
        value: 1.0,
        at_ms: 2,
    };
    assert_eq!(store.insert_feedback(&[row]).await.unwrap(), [true]);
    assert_eq!(store.feedback_aggs("f", None, None).await.unwrap().len(), 1);
}

#[tokio::test]
async fn sqlite_upgrades_a_first_release_database() {
    let db = Db::sqlite("upgrade");
    let Db::Sqlite { dir } = &db else {
        unreachable!()
    };
    let path = dir.join("state.db");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(SQLITE_SCHEMA_V1)
        .unwrap();
    assert_upgraded(&open(&db.url()).await).await;
    let schema_version: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    assert_eq!(schema_version, 3);
    // Opening again changes nothing.
    let store = open(&db.url()).await;
    assert_eq!(store.exposure_counts("f", None).await.unwrap().0.len(), 1);
    db.cleanup().await;
}

#[tokio::test]
async fn sqlite_refuses_a_newer_schema() {
    let db = Db::sqlite("newer");
    let Db::Sqlite { dir } = &db else {
        unreachable!()
    };
    rusqlite::Connection::open(dir.join("state.db"))
        .unwrap()
        .execute_batch("PRAGMA user_version = 99")
        .unwrap();
    match Store::open(&db.url()).await {
        Err(StateError::Storage(msg)) => assert!(msg.contains("upgrade switchyard"), "{msg}"),
        Err(other) => panic!("unexpected error kind: {other}"),
        Ok(_) => panic!("opened a database with a newer schema"),
    }
    db.cleanup().await;
}

#[tokio::test]
async fn bad_urls_are_rejected() {
    for url in [
        "mysql://localhost/x",
        "sqlite:",
        "state.db",
        "postgres://postgres@127.0.0.1/test?schema=bad-name",
        "postgres://postgres@127.0.0.1/test?nonsense_option=1",
    ] {
        match Store::open(url).await {
            Err(StateError::BadUrl(msg)) => eprintln!("{url}: {msg}"),
            Err(other) => panic!("{url}: expected BadUrl, got {other}"),
            Ok(_) => panic!("{url}: accepted"),
        }
    }
    // Passwords never appear in messages.
    let Err(e) = Store::open("postgres://u:hunter2@127.0.0.1/test?schema=a-b").await else {
        panic!("accepted a bad schema");
    };
    assert!(!e.to_string().contains("hunter2"), "{e}");
}

#[test]
fn change_names_and_pure_apply() {
    let note = Change::Note {
        flag: None,
        action: "reload_failed".into(),
        detail: json!({"errors": 2}),
    };
    assert_eq!((note.flag(), note.action()), (None, "reload_failed"));
    let held = Change::SetRolloutHeld {
        flag: "f".into(),
        rule: "r".into(),
        held: true,
    };
    assert_eq!(
        (held.flag(), held.action()),
        (Some("f"), "set_rollout_held")
    );
    assert_eq!(enabled("f", true).action(), "set_enabled");
    assert_eq!(
        Change::ClearFlag { flag: "f".into() }.action(),
        "clear_overrides"
    );

    let mut o = FlagOverrides::default();
    note.apply(&mut o);
    assert_eq!(o, FlagOverrides::default());
    held.apply(&mut o);
    Change::SetRolloutStage {
        flag: "f".into(),
        rule: "r".into(),
        stage: 1,
        at_ms: 5,
    }
    .apply(&mut o);
    assert!(o.rollout_held.contains("r"));
    assert_eq!((o.rollout_stage["r"], o.stage_started_at_ms["r"]), (1, 5));
    Change::SetRolloutHeld {
        flag: "f".into(),
        rule: "r".into(),
        held: false,
    }
    .apply(&mut o);
    assert!(o.rollout_held.is_empty());
    Change::ClearFlag { flag: "f".into() }.apply(&mut o);
    assert!(o.is_empty());
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

#[tokio::test]
async fn postgres_upgrades_a_first_release_database() {
    let db = Db::postgres("upgrade");
    let Db::Postgres { schema } = &db else {
        unreachable!()
    };
    let (client, connection) = tokio_postgres::connect(&pg_base_url(), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL must be reachable (set SWITCHYARD_TEST_PG)");
    let driver = tokio::spawn(connection);
    let s = format!("\"{schema}\"");
    client
        .batch_execute(&format!(
            r#"
            CREATE SCHEMA {s};
            CREATE TABLE {s}.switchyard_migrations (
                version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now());
            INSERT INTO {s}.switchyard_migrations (version) VALUES (1);
            CREATE TABLE {s}.switchyard_meta (
                id SMALLINT PRIMARY KEY CHECK (id = 1), version BIGINT NOT NULL);
            INSERT INTO {s}.switchyard_meta (id, version) VALUES (1, 7);
            CREATE TABLE {s}.switchyard_flag_state (
                flag TEXT PRIMARY KEY, overrides JSONB NOT NULL,
                updated_at TIMESTAMPTZ NOT NULL DEFAULT now());
            CREATE TABLE {s}.switchyard_audit (
                id BIGSERIAL PRIMARY KEY, at TIMESTAMPTZ NOT NULL DEFAULT now(),
                actor TEXT NOT NULL, action TEXT NOT NULL, flag TEXT, "before" JSONB NOT NULL,
                "after" JSONB NOT NULL, reason TEXT);
            CREATE INDEX switchyard_audit_flag ON {s}.switchyard_audit (flag, id);
            INSERT INTO {s}.switchyard_flag_state (flag, overrides)
                VALUES ('f', '{{"enabled": false}}');
            "#
        ))
        .await
        .unwrap();
    assert_upgraded(&open(&db.url()).await).await;
    let applied: Vec<i32> = client
        .query(
            &format!("SELECT version FROM {s}.switchyard_migrations ORDER BY version"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(applied, [1, 2, 3]);
    drop(client);
    let _ = driver.await;
    let store = open(&db.url()).await;
    assert_eq!(store.exposure_counts("f", None).await.unwrap().0.len(), 1);
    db.cleanup().await;
}

#[tokio::test]
async fn postgres_round_trip() {
    let db = Db::postgres("rt");
    round_trip(&db.url()).await;
    // `postgresql://` names the same database.
    let alias = db.url().replacen("postgres://", "postgresql://", 1);
    let store = open(&alias).await;
    assert_eq!(store.kind(), "postgres");
    assert_eq!(store.load().await.unwrap().version, 10);
    db.cleanup().await;
}

#[tokio::test]
async fn postgres_audit_newest_first_filter_limit() {
    let db = Db::postgres("audit");
    audit_order(&db.url()).await;
    db.cleanup().await;
}

#[tokio::test]
async fn postgres_before_after_json() {
    let db = Db::postgres("ba");
    before_after(&db.url()).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_changes_are_never_lost() {
    let db = Db::postgres("conc");
    concurrent_changes(&db.url()).await;
    db.cleanup().await;
}

#[tokio::test]
async fn postgres_changes_survive_reopening() {
    let db = Db::postgres("dur");
    durable(&db.url()).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_simultaneous_opens_create_the_schema_once() {
    let db = Db::postgres("open");
    simultaneous_opens(&db.url()).await;
    db.cleanup().await;
}

#[tokio::test]
async fn postgres_notify_reaches_another_store_within_1s() {
    let db = Db::postgres("notify");
    // A generous bound for a loaded machine; the notification usually arrives in milliseconds.
    subscription_sees_other_store(&db.url(), Duration::from_secs(10)).await;
    db.cleanup().await;
}

fn pg_config() -> tokio_postgres::Config {
    pg_base_url().parse().unwrap()
}

/// The test database's URL with its host and port replaced.
fn pg_url_via(addr: SocketAddr, schema: &str) -> String {
    let config = pg_config();
    let user = config.get_user().unwrap_or("postgres");
    let password = config
        .get_password()
        .map(|p| format!(":{}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    let db = config.get_dbname().unwrap_or("postgres");
    format!("postgres://{user}{password}@{addr}/{db}?schema={schema}")
}

fn pg_addr() -> SocketAddr {
    let config = pg_config();
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let host = if host == "localhost" {
        "127.0.0.1".to_owned()
    } else {
        host
    };
    format!("{host}:{port}")
        .parse()
        .expect("SWITCHYARD_TEST_PG must name an IP host")
}

#[tokio::test]
async fn postgres_down_is_unavailable_within_5s() {
    // Nothing listens on the port.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!(
        "postgres://postgres@127.0.0.1:{port}/test?schema={}",
        unique("down")
    );
    let started = Instant::now();
    match Store::open(&url).await {
        Err(StateError::Unavailable(msg)) => eprintln!("refused: {msg}"),
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(_) => panic!("opened a store on a closed port"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Something accepts connections but never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let started = Instant::now();
    match Store::open(&pg_url_via(addr, "silent")).await {
        Err(StateError::Unavailable(msg)) => eprintln!("silent: {msg}"),
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(_) => panic!("opened a store on a silent server"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    hold.abort();
}

/// A TCP relay to PostgreSQL that the test can cut and restore, to lose connections.
struct Relay {
    addr: SocketAddr,
    target: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        Relay {
            addr,
            target,
            task: Some(Self::serve(listener, target)),
        }
    }

    fn serve(listener: TcpListener, target: SocketAddr) -> JoinHandle<()> {
        tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every relayed connection.
            let mut connections = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        })
    }

    /// Closes the listener and every connection through it.
    async fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    async fn restore(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.task = Some(Self::serve(listener, self.target));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_survives_connection_loss() {
    let db = Db::postgres("loss");
    let direct = open(&db.url()).await;
    let Db::Postgres { schema } = &db else {
        unreachable!()
    };
    let mut relay = Relay::start(pg_addr()).await;
    let via_relay = open(&pg_url_via(relay.addr, schema)).await;
    via_relay
        .apply(&enabled("f", false), "ops", None)
        .await
        .unwrap();
    let mut rx = via_relay.subscribe();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!rx.has_changed().unwrap());

    // PostgreSQL is gone: every call fails fast with Unavailable.
    relay.cut().await;
    for attempt in 0..3 {
        let started = Instant::now();
        match via_relay.apply(&enabled("f", true), "ops", None).await {
            Err(StateError::Unavailable(msg)) => eprintln!("apply while down ({attempt}): {msg}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(matches!(
            via_relay.load().await,
            Err(StateError::Unavailable(_))
        ));
        assert!(matches!(
            via_relay.audit(None, 10).await,
            Err(StateError::Unavailable(_))
        ));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // Another replica changes the state meanwhile.
    direct
        .apply(&enabled("g", false), "ops", None)
        .await
        .unwrap();
    assert!(!rx.has_changed().unwrap());

    // Back: the subscription reconnects and signals once; queries reconnect lazily.
    relay.restore().await;
    tokio::time::timeout(Duration::from_secs(10), rx.changed())
        .await
        .expect("no resync signal after reconnecting")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let state = loop {
        match via_relay.load().await {
            Ok(state) => break state,
            Err(e) if Instant::now() < deadline => {
                eprintln!("load after restore: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("still failing after restore: {e}"),
        }
    };
    assert_eq!(state.flags["g"].enabled, Some(false));
    assert_eq!(
        state.flags["f"].enabled,
        Some(false),
        "no change applied while down"
    );
    via_relay
        .apply(&enabled("f", true), "ops", None)
        .await
        .unwrap();

    // Notifications flow again on the new connection.
    rx.borrow_and_update();
    direct
        .apply(&enabled("g", true), "ops", None)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(1), rx.changed())
        .await
        .unwrap()
        .unwrap();

    relay.cut().await;
    drop((direct, via_relay));
    db.cleanup().await;
}
