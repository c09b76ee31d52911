//! A database of its own for one state-store test: a fresh SQLite file or a fresh PostgreSQL
//! schema (PostgreSQL at `SWITCHYARD_TEST_PG`, default `postgres://postgres@127.0.0.1:5432/test`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use switchyard::state::Store;

pub fn pg_base_url() -> String {
    std::env::var("SWITCHYARD_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

pub fn unique(tag: &str) -> String {
    format!("sy_{tag}_{}_{:08x}", std::process::id(), fastrand::u32(..))
}

pub fn with_schema(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}schema={schema}")
}

/// A database of its own for one test: a fresh SQLite file or a fresh PostgreSQL schema.
pub enum Db {
    Sqlite { dir: PathBuf },
    Postgres { schema: String },
}

impl Db {
    pub fn sqlite(tag: &str) -> Db {
        let dir = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&dir).unwrap();
        Db::Sqlite { dir }
    }

    pub fn postgres(tag: &str) -> Db {
        Db::Postgres {
            schema: unique(tag),
        }
    }

    pub fn url(&self) -> String {
        match self {
            Db::Sqlite { dir } => format!("sqlite:{}", dir.join("state.db").display()),
            Db::Postgres { schema } => with_schema(&pg_base_url(), schema),
        }
    }

    pub async fn cleanup(self) {
        match self {
            Db::Sqlite { dir } => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Db::Postgres { schema } => {
                let (client, connection) =
                    tokio_postgres::connect(&pg_base_url(), tokio_postgres::NoTls)
                        .await
                        .expect("PostgreSQL must be reachable (set SWITCHYARD_TEST_PG)");
                let driver = tokio::spawn(connection);
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                    .await
                    .unwrap();
                drop(client);
                let _ = driver.await;
            }
        }
    }
}

pub async fn open(url: &str) -> Store {
    match Store::open(url).await {
        Ok(store) => store,
        Err(e) => panic!("opening {url}: {e}"),
    }
}
