//! `[flags.KEY]`: variations, rules, rollouts and gates, fallback chains.

use super::*;

impl Validator<'_> {
    pub(super) fn flag(&mut self, ctx: &FlagContext<'_>, key: &str, f: &RawFlag) -> Option<Flag> {
        let path = KeyPath::root().key("flags").key(key);
        let errors_before = self.errors.len();
        if f.variations.is_empty() {
            self.err(
                &path,
                "a flag needs at least one variation under [flags.KEY.variations.NAME]",
            );
            return None;
        }
        let keys: Vec<&String> = f.variations.keys().collect();
        let index_of = |name: &str| keys.iter().position(|k| k.as_str() == name);
        let mut variations = Vec::new();
        for (vkey, v) in &f.variations {
            if let Some(var) =
                self.variation(ctx, &path.key("variations").key(vkey), vkey, v, &index_of)
            {
                variations.push(var);
            }
        }
        let off_variation = match f.off_variation.as_deref() {
            Some(name) => index_of(name).unwrap_or_else(|| {
                self.err(
                    &path.key("off_variation"),
                    format!("unknown variation {name:?}{}", known(keys.iter().copied())),
                );
                0
            }),
            None => {
                self.err(
                    &path,
                    "off_variation is required: the variation served while the flag is off",
                );
                0
            }
        };
        let stable_variation = match f.stable_variation.as_deref() {
            Some(name) => index_of(name).unwrap_or_else(|| {
                self.err(
                    &path.key("stable_variation"),
                    format!("unknown variation {name:?}{}", known(keys.iter().copied())),
                );
                0
            }),
            None => off_variation,
        };
        let system_prompt_mode = match f.system_prompt_mode.as_deref() {
            None | Some("replace") => PromptMode::Replace,
            Some("insert") => PromptMode::Insert,
            Some(other) => {
                self.err(
                    &path.key("system_prompt_mode"),
                    format!("{other:?} is not one of \"replace\", \"insert\""),
                );
                PromptMode::Replace
            }
        };
        let rules = self.rules(ctx, &path, f, &index_of);
        let responder = match &f.fallback {
            None => ctx.default_responder.clone(),
            Some(r) => Arc::new(self.responder(
                &path.key("fallback"),
                Some(r),
                Some(ctx.default_responder),
            )),
        };
        if self.errors.len() > errors_before {
            return None;
        }
        self.fallback_chains(&path, &variations, stable_variation);
        if self.errors.len() > errors_before {
            return None;
        }
        let experiment_rule = match &f.experiment_rule {
            Some(id) => {
                let found = rules.iter().position(|r| &r.id == id);
                if found.is_none() {
                    self.err(&path.key("experiment_rule"), format!("unknown rule {id:?}"));
                }
                found
            }
            None => rules.iter().position(|r| {
                let mut vs: Vec<usize> = r.allocation.iter().filter_map(|a| a.variation).collect();
                vs.sort_unstable();
                vs.dedup();
                r.audience.is_none() && vs.len() >= 2
            }),
        };
        Some(Flag {
            experiment_rule,
            key: key.to_owned(),
            description: f.description.clone(),
            enabled: f.enabled.unwrap_or(true),
            off_variation,
            stable_variation,
            system_prompt_mode,
            force_fallback: f.force_fallback.unwrap_or(false),
            responder,
            variations,
            rules,
            bucketing_id_attribute: None,
        })
    }

    pub(super) fn rules(
        &mut self,
        ctx: &FlagContext<'_>,
        path: &KeyPath,
        f: &RawFlag,
        index_of: &dyn Fn(&str) -> Option<usize>,
    ) -> Vec<Rule> {
        if f.rules.is_empty() {
            self.err(path, "a flag needs rules, the last one being \"everyone else\" (no audience): add [[flags.KEY.rules]]");
            return Vec::new();
        }
        let mut rules = Vec::new();
        let mut seen = Vec::new();
        for (i, r) in f.rules.iter().enumerate() {
            let rp = path.key("rules").index(i);
            if r.id.is_empty() {
                self.err(
                    &rp.key("id"),
                    "a rule id must not be empty (it salts the hash)",
                );
            } else if seen.contains(&r.id) {
                self.err(&rp.key("id"), format!("duplicate rule id {:?}", r.id));
            }
            seen.push(r.id.clone());
            let audience = match &r.audience {
                None => None,
                Some(name) => match ctx.audiences.get(name) {
                    Some(c) => Some((name.clone(), c.clone())),
                    None => {
                        if !ctx.raw.audiences.contains_key(name) {
                            self.err(
                                &rp.key("audience"),
                                format!(
                                    "unknown audience {name:?}{}",
                                    known(ctx.raw.audiences.keys())
                                ),
                            );
                        }
                        None
                    }
                },
            };
            if i + 1 == f.rules.len() && r.audience.is_some() {
                self.err(&rp.key("audience"), "the last rule is \"everyone else\" and must not have an audience: add a final rule without one");
            }
            let rollout = r
                .rollout
                .as_ref()
                .and_then(|ro| self.rollout(&rp.key("rollout"), ro, index_of));
            if r.rollout.is_some() && !r.allocation.is_empty() {
                self.err(
                    &rp.key("rollout"),
                    "a rule has either an allocation or a rollout, not both",
                );
            }
            if r.allocation.is_empty() && r.rollout.is_none() {
                self.err(
                    &rp.key("allocation"),
                    "an allocation needs at least one range (or give the rule a rollout)",
                );
            }
            let mut allocation = Vec::new();
            let mut prev: i64 = 0;
            for (j, range) in r.allocation.iter().enumerate() {
                let ap = rp.key("allocation").index(j);
                if !(0..=i64::from(BUCKETS)).contains(&range.end) {
                    self.err(
                        &ap.key("end"),
                        format!("{} is out of range (0 ..= 10000)", range.end),
                    );
                    continue;
                }
                if range.end < prev {
                    self.err(
                        &ap.key("end"),
                        format!(
                            "ranges must be in increasing order: end {} comes after end {prev}",
                            range.end
                        ),
                    );
                }
                prev = range.end;
                let variation = match range.variation.as_deref() {
                    None | Some("") => None,
                    Some(name) => match index_of(name) {
                        Some(v) => Some(v),
                        None => {
                            self.err(&ap.key("variation"), format!("unknown variation {name:?}"));
                            None
                        }
                    },
                };
                allocation.push(Range {
                    variation,
                    end: range.end as u32,
                });
            }
            rules.push(Rule {
                id: r.id.clone(),
                audience,
                allocation,
                rollout,
                datafile: None,
            });
        }
        rules
    }

    pub(super) fn rollout(
        &mut self,
        path: &KeyPath,
        r: &RawRollout,
        index_of: &dyn Fn(&str) -> Option<usize>,
    ) -> Option<Rollout> {
        let variation = match index_of(&r.variation) {
            Some(v) => v,
            None => {
                self.err(
                    &path.key("variation"),
                    format!("unknown variation {:?}", r.variation),
                );
                return None;
            }
        };
        if r.stages.is_empty() {
            self.err(
                &path.key("stages"),
                "a rollout needs at least one stage (percent of traffic)",
            );
            return None;
        }
        let mut stages = Vec::new();
        let mut prev = -1.0;
        for (i, pct) in r.stages.iter().enumerate() {
            if !(0.0..=100.0).contains(pct) {
                self.err(
                    &path.key("stages").index(i),
                    format!("{pct} is out of range (0 ..= 100 percent)"),
                );
                return None;
            }
            if *pct <= prev {
                self.err(
                    &path.key("stages").index(i),
                    "stages must grow: each one larger than the one before",
                );
                return None;
            }
            prev = *pct;
            stages.push((pct * 100.0).round() as u32);
        }
        let initial_stage = match r.initial_stage {
            None => 0,
            Some(n) if n >= 0 && (n as usize) < stages.len() => n as u32,
            Some(n) => {
                self.err(
                    &path.key("initial_stage"),
                    format!("{n} is not a stage index (0 ..= {})", stages.len() - 1),
                );
                0
            }
        };
        let g = r.gate.as_ref();
        let gp = path.key("gate");
        let default = RawGate::default();
        let g = g.unwrap_or(&default);
        let rate = |v: &mut Self, key: &str, x: Option<f64>| -> Option<f64> {
            match x {
                Some(x) if !(0.0..=1.0).contains(&x) => {
                    v.err(&gp.key(key), format!("{x} is out of range (0 ..= 1)"));
                    None
                }
                other => other,
            }
        };
        let count = |v: &mut Self, key: &str, x: Option<i64>, default: u64| -> u64 {
            match x {
                None => default,
                Some(n) if n >= 0 => n as u64,
                Some(n) => {
                    v.err(&gp.key(key), format!("{n} must not be negative"));
                    default
                }
            }
        };
        let gate = Gate {
            min_requests: count(self, "min_requests", g.min_requests, 100),
            hold: self.duration(&gp.key("hold"), g.hold.as_deref(), Duration::from_secs(600)),
            max_error_rate: rate(self, "max_error_rate", g.max_error_rate),
            max_fallback_rate: rate(self, "max_fallback_rate", g.max_fallback_rate),
            max_p95_seconds: g.max_p95_seconds,
            max_p95_ratio: g.max_p95_ratio,
            rollback_error_rate: rate(self, "rollback_error_rate", g.rollback_error_rate),
            rollback_fallback_rate: rate(self, "rollback_fallback_rate", g.rollback_fallback_rate),
            rollback_min_requests: count(
                self,
                "rollback_min_requests",
                g.rollback_min_requests,
                20,
            ),
            source: self.source(&gp.key("source"), g.source.as_deref()),
            window: g
                .window
                .as_deref()
                .map(|w| self.duration(&gp.key("window"), Some(w), Duration::ZERO)),
        };
        for (key, v) in [
            ("max_p95_seconds", gate.max_p95_seconds),
            ("max_p95_ratio", gate.max_p95_ratio),
        ] {
            if v.is_some_and(|x| !(x > 0.0 && x.is_finite())) {
                self.err(&gp.key(key), "must be a positive number");
            }
        }
        Some(Rollout {
            variation,
            stages,
            initial_stage,
            auto_advance: r.auto_advance.unwrap_or(false),
            gate,
        })
    }

    pub(super) fn variation(
        &mut self,
        ctx: &FlagContext<'_>,
        path: &KeyPath,
        key: &str,
        v: &RawVariation,
        index_of: &dyn Fn(&str) -> Option<usize>,
    ) -> Option<Variation> {
        let provider = match ctx.providers.get(&v.provider) {
            Some(p) => Some(p.clone()),
            None => {
                if !ctx.raw.providers.contains_key(&v.provider) {
                    self.err(
                        &path.key("provider"),
                        format!(
                            "unknown provider {:?}{}",
                            v.provider,
                            known(ctx.raw.providers.keys())
                        ),
                    );
                }
                None
            }
        };
        if v.model_id.trim().is_empty() {
            self.err(&path.key("model_id"), "model_id must not be empty");
        }
        let system_prompt = match &v.system_prompt_variant {
            None => None,
            Some(name) => match ctx.prompts.get(name) {
                Some(text) => Some((name.clone(), text.clone())),
                None => {
                    self.err(
                        &path.key("system_prompt_variant"),
                        format!("unknown prompt {name:?}{}", known(ctx.prompts.keys())),
                    );
                    None
                }
            },
        };
        if let Some(t) = v.temperature {
            if !(0.0..=2.0).contains(&t) {
                self.err(
                    &path.key("temperature"),
                    format!("{t} is out of range (0 ..= 2)"),
                );
            }
        }
        let token_budget = match v.token_budget {
            None => None,
            Some(n) if (1..=10_000_000).contains(&n) => Some(n as u32),
            Some(n) => {
                self.err(
                    &path.key("token_budget"),
                    format!("{n} is out of range (1 ..= 10000000)"),
                );
                None
            }
        };
        let tool_policy = match v.tool_policy.as_deref() {
            None | Some("all") => ToolPolicy::All,
            Some("none") => ToolPolicy::None,
            Some(name) => match ctx.raw.tool_policies.get(name) {
                Some(tools) => ToolPolicy::Allow {
                    name: name.to_owned(),
                    tools: tools.clone(),
                },
                None => {
                    self.err(
                        &path.key("tool_policy"),
                        format!(
                            "unknown tool policy {name:?} (\"all\", \"none\"{})",
                            ctx.raw
                                .tool_policies
                                .keys()
                                .map(|k| format!(", {k:?}"))
                                .collect::<String>()
                        ),
                    );
                    ToolPolicy::All
                }
            },
        };
        let fallback_behavior = match v.fallback_behavior.as_deref() {
            None | Some("error") => FallbackBehavior::Error,
            Some("rule-based") => FallbackBehavior::RuleBased,
            Some("stable") => FallbackBehavior::Stable,
            Some(other) => match other.strip_prefix("variation:") {
                Some(target) => match index_of(target) {
                    Some(i) if target != key => FallbackBehavior::Variation(i),
                    Some(_) => {
                        self.err(
                            &path.key("fallback_behavior"),
                            "a variation cannot fall back to itself",
                        );
                        FallbackBehavior::Error
                    }
                    None => {
                        self.err(
                            &path.key("fallback_behavior"),
                            format!("unknown variation {target:?}"),
                        );
                        FallbackBehavior::Error
                    }
                },
                None => {
                    self.err(&path.key("fallback_behavior"), format!("{other:?} is not one of \"rule-based\", \"stable\", \"variation:<key>\", \"error\""));
                    FallbackBehavior::Error
                }
            },
        };
        for reserved in [
            "provider",
            "model_id",
            "system_prompt_variant",
            "temperature",
            "token_budget",
            "tool_policy",
            "retrieval_profile",
            "fallback_behavior",
        ] {
            if v.variables.contains_key(reserved) {
                self.err(&path.key("variables").key(reserved), "this name is a built-in variable of the variation; set it on the variation itself");
            }
        }
        let mut variables = serde_json::Map::new();
        variables.insert("provider".into(), v.provider.clone().into());
        variables.insert("model_id".into(), v.model_id.clone().into());
        variables.insert(
            "system_prompt_variant".into(),
            v.system_prompt_variant.clone().into(),
        );
        variables.insert("temperature".into(), v.temperature.into());
        variables.insert("token_budget".into(), v.token_budget.into());
        variables.insert("tool_policy".into(), tool_policy.name().into());
        variables.insert(
            "fallback_behavior".into(),
            v.fallback_behavior
                .clone()
                .unwrap_or_else(|| "error".into())
                .into(),
        );
        variables.insert(
            "retrieval_profile".into(),
            v.retrieval_profile.clone().into(),
        );
        for (k, val) in &v.variables {
            variables.insert(k.clone(), val.clone());
        }
        let provider = provider?;
        let base = provider.timeouts;
        let timeouts = Timeouts {
            connect: base.connect,
            first_byte: self.duration(
                &path.key("first_byte_timeout"),
                v.first_byte_timeout.as_deref(),
                base.first_byte,
            ),
            idle: self.duration(
                &path.key("idle_timeout"),
                v.idle_timeout.as_deref(),
                base.idle,
            ),
            total: self.duration(&path.key("timeout"), v.timeout.as_deref(), base.total),
        };
        let cache = self.variation_cache(path, v.cache.as_ref());
        Some(Variation {
            cache,
            key: key.to_owned(),
            force_fallback: v.force_fallback.unwrap_or(false),
            timeouts,
            provider,
            model_id: v.model_id.clone(),
            system_prompt,
            temperature: v.temperature,
            token_budget,
            tool_policy,
            fallback_behavior,
            retrieval_profile: v.retrieval_profile.clone(),
            variables: serde_json::Value::Object(variables),
        })
    }

    pub(super) fn responder(
        &mut self,
        path: &KeyPath,
        r: Option<&RawResponder>,
        base: Option<&Arc<Responder>>,
    ) -> Responder {
        let mut rules = Vec::new();
        if let Some(r) = r {
            for (i, rule) in r.rules.iter().enumerate() {
                match regex::RegexBuilder::new(&rule.pattern)
                    .size_limit(1 << 20)
                    .build()
                {
                    Ok(re) => rules.push((re, rule.reply.clone())),
                    Err(e) => self.err(
                        &path.key("rules").index(i).key("pattern"),
                        format!("invalid regex: {e}"),
                    ),
                }
            }
        }
        let default_reply = r
            .and_then(|r| r.default_reply.clone())
            .or_else(|| base.map(|b| b.reply("").to_owned()))
            .unwrap_or_else(|| crate::fallback::DEFAULT_REPLY.to_owned());
        Responder::new(rules, default_reply)
    }

    /// Fallback chains must end (rule-based or error) without visiting a variation twice.
    pub(super) fn fallback_chains(
        &mut self,
        path: &KeyPath,
        variations: &[Variation],
        stable: usize,
    ) {
        for (start, v) in variations.iter().enumerate() {
            let mut seen = vec![start];
            let mut current = &v.fallback_behavior;
            loop {
                let next = match current {
                    FallbackBehavior::Stable => stable,
                    FallbackBehavior::Variation(i) => *i,
                    FallbackBehavior::RuleBased | FallbackBehavior::Error => break,
                };
                if seen.contains(&next) {
                    seen.push(next);
                    let chain: Vec<&str> = seen
                        .iter()
                        .filter_map(|i| variations.get(*i))
                        .map(|v| v.key.as_str())
                        .collect();
                    self.err(
                        &path.key("variations").key(&v.key).key("fallback_behavior"),
                        format!("the fallback chain loops: {} (end it with \"rule-based\" or \"error\")", chain.join(" -> ")),
                    );
                    break;
                }
                seen.push(next);
                match variations.get(next) {
                    Some(n) => current = &n.fallback_behavior,
                    None => break,
                }
            }
        }
    }
}

pub(super) struct FlagContext<'a> {
    pub(super) default_responder: &'a Arc<Responder>,
    pub(super) raw: &'a RawConfig,
    pub(super) providers: &'a BTreeMap<String, Arc<Provider>>,
    pub(super) prompts: &'a BTreeMap<String, Arc<str>>,
    pub(super) audiences: &'a BTreeMap<String, Arc<Condition>>,
}
