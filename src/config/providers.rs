//! `[providers.NAME]`: kinds, URLs per wire format, credentials, timeouts, retries, breakers.

use super::*;

impl Validator<'_> {
    pub(super) fn provider(
        &mut self,
        path: &KeyPath,
        name: &str,
        p: &RawProvider,
    ) -> Option<Provider> {
        let total = self.duration(
            &path.key("timeout"),
            p.timeout.as_deref(),
            Duration::from_secs(120),
        );
        let timeouts = Timeouts {
            connect: self.duration(
                &path.key("connect_timeout"),
                p.connect_timeout.as_deref(),
                Duration::from_secs(5),
            ),
            first_byte: self.duration(
                &path.key("first_byte_timeout"),
                p.first_byte_timeout.as_deref(),
                total,
            ),
            idle: self.duration(&path.key("idle_timeout"), p.idle_timeout.as_deref(), total),
            total,
        };
        let retry = self.retry(&path.key("retry"), p.retry.as_ref());
        let circuit = self.circuit(&path.key("circuit"), p.circuit.as_ref());
        let mock_only = [
            ("latency", p.latency.is_some()),
            ("stream_chunks", p.stream_chunks.is_some()),
            ("chunk_interval", p.chunk_interval.is_some()),
        ];
        let kind = match p.kind.as_str() {
            "mock" => {
                for (key, set) in [
                    ("base_url", p.base_url.is_some()),
                    ("api_key_env", p.api_key_env.is_some()),
                    ("default_max_tokens", p.default_max_tokens.is_some()),
                    ("api_version", p.api_version.is_some()),
                ] {
                    if set {
                        self.err(&path.key(key), "not used by the mock provider");
                    }
                }
                let stream_chunks = match p.stream_chunks {
                    None => 4,
                    Some(n) if (1..=10_000).contains(&n) => n as u32,
                    Some(n) => {
                        self.err(
                            &path.key("stream_chunks"),
                            format!("{n} is out of range (1 ..= 10000)"),
                        );
                        4
                    }
                };
                ProviderKind::Mock(MockSettings {
                    latency: self.duration(
                        &path.key("latency"),
                        p.latency.as_deref(),
                        Duration::ZERO,
                    ),
                    chunk_interval: self.duration(
                        &path.key("chunk_interval"),
                        p.chunk_interval.as_deref(),
                        Duration::ZERO,
                    ),
                    stream_chunks,
                })
            }
            "openai" | "anthropic" => {
                for (key, set) in mock_only {
                    if set {
                        self.err(&path.key(key), "only the mock provider takes this key");
                    }
                }
                if p.kind == "openai" {
                    for (key, set) in [
                        ("default_max_tokens", p.default_max_tokens.is_some()),
                        ("api_version", p.api_version.is_some()),
                    ] {
                        if set {
                            self.err(&path.key(key), "only the anthropic provider takes this key");
                        }
                    }
                    ProviderKind::OpenAi(self.openai(path, p)?)
                } else {
                    ProviderKind::Anthropic(self.anthropic(path, p)?)
                }
            }
            other => {
                self.err(&path.key("kind"), format!("unknown provider kind {other:?} (one of \"openai\", \"anthropic\", \"mock\")"));
                return None;
            }
        };
        let http2_prior_knowledge = p.http2_prior_knowledge.unwrap_or(false);
        if http2_prior_knowledge {
            let key = path.key("http2_prior_knowledge");
            if matches!(kind, ProviderKind::Mock(_)) {
                self.err(&key, "not used by the mock provider");
            } else if p
                .base_url
                .as_deref()
                .is_none_or(|u| !u.to_ascii_lowercase().starts_with("http://"))
            {
                self.err(
                    &key,
                    "only for plain-text http:// providers (over https:// HTTP/2 is negotiated by ALPN)",
                );
            }
        }
        let apis = self.apis(&path.key("apis"), &kind, p.apis.as_deref());
        Some(Provider {
            name: name.to_owned(),
            kind,
            timeouts,
            retry,
            circuit,
            http2_prior_knowledge,
            apis,
        })
    }

    /// `apis`: the wire formats a provider accepts as they are. Defaults: chat and embeddings
    /// for OpenAI-compatible endpoints and the mock, messages for Anthropic.
    pub(super) fn apis(
        &mut self,
        path: &KeyPath,
        kind: &ProviderKind,
        raw: Option<&[String]>,
    ) -> Vec<WireFormat> {
        let possible: &[WireFormat] = match kind {
            ProviderKind::Mock(_) => &[WireFormat::Chat, WireFormat::Embeddings],
            ProviderKind::OpenAi(_) => &[
                WireFormat::Chat,
                WireFormat::Responses,
                WireFormat::Embeddings,
            ],
            ProviderKind::Anthropic(_) => &[WireFormat::Messages],
        };
        let Some(raw) = raw else {
            return match kind {
                ProviderKind::Anthropic(_) => vec![WireFormat::Messages],
                _ => vec![WireFormat::Chat, WireFormat::Embeddings],
            };
        };
        let mut apis = Vec::new();
        for (i, name) in raw.iter().enumerate() {
            match WireFormat::parse(name) {
                Some(f) if possible.contains(&f) => {
                    if !apis.contains(&f) {
                        apis.push(f);
                    }
                }
                Some(f) => self.err(
                    &path.index(i),
                    format!(
                        "a {} provider cannot accept {:?} (it accepts {})",
                        kind.as_str(),
                        f.as_str(),
                        possible.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                ),
                None => self.err(
                    &path.index(i),
                    format!("unknown API {name:?} (one of \"chat\", \"responses\", \"messages\", \"embeddings\")"),
                ),
            }
        }
        apis
    }

    pub(super) fn retry(&mut self, path: &KeyPath, r: Option<&RawRetry>) -> RetryPolicy {
        let default = RawRetry::default();
        let r = r.unwrap_or(&default);
        let retries = match r.attempts {
            None => 2,
            Some(n) if (1..=10).contains(&n) => (n - 1) as u32,
            Some(n) => {
                self.err(
                    &path.key("attempts"),
                    format!("{n} is out of range (1 ..= 10 attempts in all)"),
                );
                2
            }
        };
        let budget = match r.budget {
            None => 0.2,
            Some(b) if (0.0..=1.0).contains(&b) => b,
            Some(b) => {
                self.err(
                    &path.key("budget"),
                    format!("{b} is out of range (0 ..= 1)"),
                );
                0.2
            }
        };
        RetryPolicy {
            retries,
            backoff: self.duration(
                &path.key("backoff"),
                r.backoff.as_deref(),
                Duration::from_millis(100),
            ),
            max_backoff: self.duration(
                &path.key("max_backoff"),
                r.max_backoff.as_deref(),
                Duration::from_secs(2),
            ),
            retry_after_cap: self.duration(
                &path.key("retry_after_cap"),
                r.retry_after_cap.as_deref(),
                Duration::from_secs(5),
            ),
            budget,
        }
    }

    pub(super) fn circuit(&mut self, path: &KeyPath, c: Option<&RawCircuit>) -> CircuitPolicy {
        let default = RawCircuit::default();
        let c = c.unwrap_or(&default);
        let error_rate = match c.error_rate {
            None => 0.5,
            Some(r) if r > 0.0 && r <= 1.0 => r,
            Some(r) => {
                self.err(
                    &path.key("error_rate"),
                    format!("{r} is out of range (0 < rate <= 1)"),
                );
                0.5
            }
        };
        let min_requests = match c.min_requests {
            None => 20,
            Some(n) if (1..=1_000_000).contains(&n) => n as u32,
            Some(n) => {
                self.err(
                    &path.key("min_requests"),
                    format!("{n} is out of range (1 ..= 1000000)"),
                );
                20
            }
        };
        CircuitPolicy {
            enabled: c.enabled.unwrap_or(true),
            error_rate,
            min_requests,
            window: self.duration(
                &path.key("window"),
                c.window.as_deref(),
                Duration::from_secs(30),
            ),
            cooldown: self.duration(
                &path.key("cooldown"),
                c.cooldown.as_deref(),
                Duration::from_secs(10),
            ),
        }
    }

    pub(super) fn url(
        &mut self,
        path: &KeyPath,
        base: &str,
        suffix: &str,
        query: &BTreeMap<String, String>,
    ) -> Option<Uri> {
        let base = base.trim_end_matches('/');
        let mut url = format!("{base}{suffix}");
        for (i, (k, v)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&format!("{k}={v}"));
        }
        match url.parse::<Uri>() {
            Ok(u)
                if matches!(u.scheme_str(), Some("http") | Some("https")) && u.host().is_some() =>
            {
                Some(u)
            }
            _ => {
                self.err(
                    &path.key("base_url"),
                    format!("invalid URL {base:?}: write an http:// or https:// URL"),
                );
                None
            }
        }
    }

    pub(super) fn secret(&mut self, path: &KeyPath, var: &str, prefix: &str) -> Option<Secret> {
        match (self.env)(var) {
            None => {
                self.err(
                    &path.key("api_key_env"),
                    format!("the environment variable {var} is not set"),
                );
                None
            }
            Some(key) => match HeaderValue::from_str(&format!("{prefix}{}", key.trim())) {
                Ok(v) => Some(Secret::new(v)),
                Err(_) => {
                    // Never echo the value: it is a secret.
                    self.err(
                        &path.key("api_key_env"),
                        format!("the value of {var} is not a valid header value"),
                    );
                    None
                }
            },
        }
    }

    pub(super) fn extra_headers(
        &mut self,
        path: &KeyPath,
        p: &RawProvider,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers = Vec::new();
        for (k, v) in &p.headers {
            match (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                (Ok(k), Ok(v)) => headers.push((k, v)),
                _ => self.err(&path.key("headers").key(k), "invalid header name or value"),
            }
        }
        headers
    }

    pub(super) fn openai(&mut self, path: &KeyPath, p: &RawProvider) -> Option<OpenAiSettings> {
        let Some(base) = p.base_url.as_deref() else {
            self.err(path, "an \"openai\" provider needs base_url");
            return None;
        };
        let chat_url = self.url(path, base, "/chat/completions", &p.query);
        let auth_header = match HeaderName::from_bytes(
            p.auth_header
                .as_deref()
                .unwrap_or("authorization")
                .as_bytes(),
        ) {
            Ok(h) => Some(h),
            Err(_) => {
                self.err(&path.key("auth_header"), "invalid header name");
                None
            }
        };
        let auth = match (&p.api_key_env, auth_header) {
            (Some(var), Some(h)) => {
                let prefix = if h == http::header::AUTHORIZATION {
                    "Bearer "
                } else {
                    ""
                };
                self.secret(path, var, prefix).map(|s| (h, s))
            }
            _ => None,
        };
        let headers = self.extra_headers(path, p);
        let responses_url = self.url(path, base, "/responses", &p.query);
        let embeddings_url = self.url(path, base, "/embeddings", &p.query);
        Some(OpenAiSettings {
            chat_url: chat_url?,
            responses_url: responses_url?,
            embeddings_url: embeddings_url?,
            base_url: base.trim_end_matches('/').to_owned(),
            query: p
                .query
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&"),
            auth,
            headers,
        })
    }

    pub(super) fn anthropic(
        &mut self,
        path: &KeyPath,
        p: &RawProvider,
    ) -> Option<AnthropicSettings> {
        if p.auth_header.is_some() {
            self.err(
                &path.key("auth_header"),
                "the anthropic provider always sends x-api-key",
            );
        }
        let base = p
            .base_url
            .as_deref()
            .unwrap_or("https://api.anthropic.com/v1");
        let messages_url = self.url(path, base, "/messages", &p.query);
        let api_key = p
            .api_key_env
            .as_deref()
            .and_then(|var| self.secret(path, var, ""));
        let version = HeaderValue::from_str(p.api_version.as_deref().unwrap_or("2023-06-01"))
            .ok()
            .or_else(|| {
                self.err(&path.key("api_version"), "invalid header value");
                None
            });
        let default_max_tokens = match p.default_max_tokens {
            None => 1024,
            Some(n) if (1..=1_000_000).contains(&n) => n as u32,
            Some(n) => {
                self.err(
                    &path.key("default_max_tokens"),
                    format!("{n} is out of range (1 ..= 1000000)"),
                );
                1024
            }
        };
        let headers = self.extra_headers(path, p);
        let count_tokens_url = self.url(path, base, "/messages/count_tokens", &p.query);
        Some(AnthropicSettings {
            messages_url: messages_url?,
            count_tokens_url: count_tokens_url?,
            api_key,
            version: version?,
            default_max_tokens,
            headers,
        })
    }
}
