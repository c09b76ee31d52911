//! The store's URL: the `schema` parameter split off (the driver rejects unknown parameters)
//! and the location shown in messages, without password.

use crate::state::StateError;

/// Splits the `schema` parameter off a PostgreSQL URL (the driver rejects unknown parameters).
pub(super) fn split_schema(url: &str) -> Result<(String, String), StateError> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, query),
        None => (url, ""),
    };
    let mut schema = None;
    let mut kept = Vec::new();
    for param in query.split('&').filter(|p| !p.is_empty()) {
        match param.split_once('=') {
            Some(("schema", value)) => schema = Some(value.to_owned()),
            _ => kept.push(param),
        }
    }
    let schema = schema.unwrap_or_else(|| "public".to_owned());
    let valid = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && schema
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(StateError::BadUrl(format!(
            "{:?}: schema {schema:?} must be 1–63 letters, digits or underscores, not starting \
             with a digit",
            crate::state::redact(url)
        )));
    }
    let pg_url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((pg_url, schema))
}

/// `postgres://user@host:port/db?schema=…` (no password).
pub(super) fn describe_config(config: &tokio_postgres::Config, schema: &str) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let host = match host {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            match config.get_ports().get(i).or(config.get_ports().first()) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    let user = config
        .get_user()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let db = config.get_dbname().unwrap_or_default();
    format!("postgres://{user}{}/{db}?schema={schema}", hosts.join(","))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn schema_parameter_is_split_off_and_checked() {
        let (url, schema) = split_schema("postgres://u@h/db").unwrap();
        assert_eq!(
            (url.as_str(), schema.as_str()),
            ("postgres://u@h/db", "public")
        );
        let (url, schema) =
            split_schema("postgres://u@h/db?connect_timeout=3&schema=sy_1&sslmode=disable")
                .unwrap();
        assert_eq!(url, "postgres://u@h/db?connect_timeout=3&sslmode=disable");
        assert_eq!(schema, "sy_1");
        for bad in ["x-y", "1abc", "", "a\"b", &"a".repeat(64)] {
            let url = format!("postgres://h/db?schema={bad}");
            assert!(
                matches!(split_schema(&url), Err(StateError::BadUrl(_))),
                "{bad:?}"
            );
        }
    }
}
