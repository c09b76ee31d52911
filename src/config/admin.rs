//! `[admin]`: named bearer tokens.

use super::*;

impl Validator<'_> {
    pub(super) fn admin(&mut self, raw: &RawConfig) -> Vec<AdminToken> {
        let tokens = self.tokens(&KeyPath::root().key("admin"), &raw.admin.tokens);
        if let Some(url) = &raw.state.url {
            if !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
            {
                self.err(
                    &KeyPath::root().key("state").key("url"),
                    "write \"sqlite:PATH\" or \"postgres://…\"",
                );
            }
        }
        tokens
    }

    /// Named bearer tokens of a section (`[admin]`, `[ofrep]`).
    pub(super) fn tokens(
        &mut self,
        section: &KeyPath,
        list: &[raw::RawAdminToken],
    ) -> Vec<AdminToken> {
        let mut tokens = Vec::new();
        for (i, t) in list.iter().enumerate() {
            let path = section.key("tokens").index(i);
            if t.name.trim().is_empty() {
                self.err(&path.key("name"), "a token needs a name (the audit actor)");
            }
            let (value, source) = match (&t.token_env, &t.token_file) {
                (Some(var), None) => ((self.env)(var), format!("environment variable {var}")),
                (None, Some(file)) => (std::fs::read_to_string(file).ok(), format!("file {file}")),
                _ => {
                    self.err(
                        &path,
                        "a token needs exactly one of token_env or token_file",
                    );
                    continue;
                }
            };
            let token = value
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .and_then(|v| HeaderValue::from_str(&v).ok())
                .map(Secret::new);
            let policy = t.policy.as_ref().map(|p| {
                if section.to_string() != "admin" {
                    self.err(
                        &path.key("policy"),
                        "only [admin] tokens take a policy (agent tokens)",
                    );
                }
                Arc::new(self.agent_policy(&path.key("policy"), p))
            });
            tokens.push(AdminToken {
                name: t.name.clone(),
                token,
                source,
                policy,
            });
        }
        tokens
    }
}
