//! Query strings and path segments: percent-decoding into UTF-8, with a 400 naming the query
//! when it is malformed.

use percent_encoding::percent_decode_str;

use crate::openai::ApiError;

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a space).
pub fn percent_decode(s: &str) -> Result<String, ApiError> {
    decode(&s.replace('+', " "))
}

/// Decodes one path segment (`+` stays `+`).
pub fn decode_segment(s: &str) -> Result<String, ApiError> {
    decode(s)
}

fn decode(s: &str) -> Result<String, ApiError> {
    // A `%` not followed by two hex digits is malformed (the crate would keep it as it is).
    let b = s.as_bytes();
    let malformed = b.iter().enumerate().any(|(i, c)| {
        *c == b'%'
            && !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    });
    if malformed {
        return Err(ApiError::field(
            "query",
            "malformed percent-encoding in the query string",
        ));
    }
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| ApiError::field("query", "the query string is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_components_and_segments() {
        assert_eq!(percent_decode("a+b%20c%2B").ok().as_deref(), Some("a b c+"));
        assert_eq!(decode_segment("a+b%2Fc").ok().as_deref(), Some("a+b/c"));
        assert_eq!(percent_decode("%C3%A9").ok().as_deref(), Some("é"));
        assert!(percent_decode("%zz").is_err());
        assert!(percent_decode("%4").is_err());
        assert!(percent_decode("%FF").is_err());
    }
}
