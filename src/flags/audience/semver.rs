//! Semantic versions, per Optimizely's SDKs (python-sdk
//! `compare_user_version_with_target_version`, javascript-sdk
//! `semantic_version.compareVersion`).
//!
//! A version is `N`, `N.N` or `N.N.N` (ASCII digits, no empty parts, no
//! whitespace anywhere), optionally followed by a pre-release suffix
//! (`-...`, when the first `-` comes before any `+`) or a build suffix
//! (`+...`). The suffix is kept whole as one extra part. The target
//! (condition) version only constrains the parts it has, so target "2.1"
//! equals user "2.1.9".

use std::cmp::Ordering;

/// Whether `v` carries a pre-release suffix: it has a `-` and no `+` before it.
fn is_pre_release(v: &str) -> bool {
    match (v.find('-'), v.find('+')) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(pre), Some(build)) => pre < build,
    }
}

/// Whether `v` carries a build suffix: it has a `+` and no `-` before it.
fn is_build(v: &str) -> bool {
    match (v.find('-'), v.find('+')) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(pre), Some(build)) => build < pre,
    }
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Splits a version into its numeric parts plus an optional trailing suffix
/// part; `None` if the version is invalid.
pub(super) fn split_version(v: &str) -> Option<Vec<&str>> {
    if v.chars().any(char::is_whitespace) {
        return None;
    }
    let delimiter = if is_pre_release(v) {
        Some('-')
    } else if is_build(v) {
        Some('+')
    } else {
        None
    };
    let (prefix, suffix) = match delimiter.and_then(|d| v.split_once(d)) {
        Some((prefix, suffix)) => (prefix, suffix),
        None => (v, ""),
    };
    let mut parts: Vec<&str> = prefix.split('.').collect();
    if parts.len() > 3 || !parts.iter().all(|p| is_digits(p)) {
        return None;
    }
    if !suffix.is_empty() {
        parts.push(suffix);
    }
    Some(parts)
}

/// Compares two strings of ASCII digits as unbounded integers.
fn compare_numeric(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// How the user version compares with the target version (`Greater` means
/// the user version is higher), or `None` if either is invalid.
pub(super) fn compare_versions(target: &str, user: &str) -> Option<Ordering> {
    let target_parts = split_version(target)?;
    let user_parts = split_version(user)?;
    let target_pre = is_pre_release(target);
    let target_build = is_build(target);
    let user_pre = is_pre_release(user);

    for (idx, target_part) in target_parts.iter().enumerate() {
        let Some(user_part) = user_parts.get(idx) else {
            return Some(if target_pre || target_build {
                Ordering::Greater
            } else {
                Ordering::Less
            });
        };
        if !is_digits(user_part) {
            match user_part.cmp(target_part) {
                Ordering::Less => {
                    return Some(if target_pre && !user_pre {
                        Ordering::Greater
                    } else {
                        Ordering::Less
                    })
                }
                Ordering::Greater => {
                    return Some(if !target_pre && user_pre {
                        Ordering::Less
                    } else {
                        Ordering::Greater
                    })
                }
                Ordering::Equal => {}
            }
        } else if is_digits(target_part) {
            match compare_numeric(user_part, target_part) {
                Ordering::Equal => {}
                other => return Some(other),
            }
        }
        // A numeric user part against a non-numeric target suffix: the
        // javascript-sdk compares it with NaN and moves on (the python-sdk
        // raises), so it counts as equal here.
    }
    if user_pre && !target_pre {
        return Some(Ordering::Less);
    }
    Some(Ordering::Equal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_versions_table() {
        use Ordering::{Equal, Greater, Less};
        // (target, user, user compared with target): the expectations of
        // the Optimizely python-sdk and javascript-sdk semantic-version tests.
        let cases: &[(&str, &str, Ordering)] = &[
            ("2.0.1", "2.0.1", Equal),
            ("2.9.9-beta", "2.9.9-beta", Equal),
            ("2.1", "2.1.0", Equal),
            ("2", "2.12", Equal),
            ("2.9", "2.9.1", Equal),
            ("2.9.1", "2.9.1+beta", Equal),
            ("2.9+beta", "2.9+beta", Equal),
            ("2.9.9+beta", "2.9.9+beta", Equal),
            ("2.9.9+beta-alpha", "2.9.9+beta-alpha", Equal),
            ("2.2.3", "2.2.3+beta", Equal),
            ("2.0.0", "2.0.1", Greater),
            ("2.0", "3.0.1", Greater),
            ("2.0.0", "2.1", Greater),
            ("2.1.2-beta", "2.1.2-release", Greater),
            ("2.1.3-beta1", "2.1.3-beta2", Greater),
            ("2.9.9-beta", "2.9.9", Greater),
            ("2.9.9+beta", "2.9.9", Greater),
            ("3.7.0-prerelease+build", "3.7.0-prerelease+rc", Greater),
            ("2.2.3-beta-beta1", "2.2.3-beta-beta2", Greater),
            ("2.2.3-beta+beta1", "2.2.3-beta+beta2", Greater),
            ("2.2.3+beta2-beta1", "2.2.3+beta3-beta2", Greater),
            ("2.2.3+beta", "2.2.3", Greater),
            ("2.0.1", "2.0.0", Less),
            ("3.0", "2.0.1", Less),
            ("2.3", "2.0.1", Less),
            ("2.3.5", "2.3.1", Less),
            ("2.9.8", "2.9", Less),
            ("3.1", "3", Less),
            ("2.1.2-release", "2.1.2-beta", Less),
            ("2.9.9+beta", "2.9.9-beta", Less),
            (
                "3.7.0+build3.7.0-prerelease+build",
                "3.7.0-prerelease",
                Less,
            ),
            ("2.1.3-beta-beta2", "2.1.3-beta", Less),
            ("2.1.3-beta1+beta3", "2.1.3-beta1+beta2", Less),
            ("2.1.3", "2.1.3-beta", Less),
            // Numeric parts compare as integers, not text.
            ("2.9", "2.10", Greater),
            ("2.010", "2.10", Equal),
            (
                "1.0.99999999999999999999999",
                "1.0.100000000000000000000000",
                Greater,
            ),
        ];
        for &(target, user, expected) in cases {
            assert_eq!(
                compare_versions(target, user),
                Some(expected),
                "target {target} user {user}"
            );
        }
        let invalid = [
            "-",
            ".",
            "..",
            "+",
            "+test",
            " ",
            "2 .3. 0",
            "2.",
            ".2.2",
            "3.7.2.2",
            "3.x",
            ",",
            "+build-prerelease",
            "2..2",
            "",
            "v1.2.3",
            "1.2.3\t",
        ];
        for version in invalid {
            assert_eq!(compare_versions("2.1.0", version), None, "user {version:?}");
            assert_eq!(
                compare_versions(version, "2.1.0"),
                None,
                "target {version:?}"
            );
        }
    }
}
