//! Phase 4, rewrite: the variation's configuration applied to the request. Members the
//! variation does not govern are copied byte for byte, in their original order.

use std::io::Write;

use crate::flags::{PromptMode, ToolPolicy, Variation};
use crate::proxy::request::ChatRequest;

/// What the rewrite needs to know besides the request and the variation.
#[derive(Debug, Clone, Copy)]
pub struct RewriteOptions {
    /// How the variation's system prompt meets the client's.
    pub prompt_mode: PromptMode,
    /// Ask the provider for usage in streams (so tokens are counted), even when the client did
    /// not; the relay then removes it again.
    pub force_stream_usage: bool,
}

fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn write_key(out: &mut Vec<u8>, first: &mut bool, key: &str) {
    if !*first {
        out.push(b',');
    }
    *first = false;
    write_json_str(out, key);
    out.push(b':');
}

/// Rewrites `req` for `variation`: `model`, system prompt, `temperature`, token budget, tool
/// policy, and usage in streams. Returns the body to send upstream.
pub fn rewrite(req: &ChatRequest<'_>, variation: &Variation, opts: RewriteOptions) -> Vec<u8> {
    rewrite_to(req, Some(variation), &variation.model_id, opts)
}

/// Rewrites only `model` (and stream usage): the passthrough path.
pub fn rewrite_passthrough(req: &ChatRequest<'_>, opts: RewriteOptions) -> Vec<u8> {
    rewrite_to(req, None, &req.model, opts)
}

fn kept_tools<'r>(req: &'r ChatRequest<'_>, policy: &ToolPolicy) -> Option<Vec<&'r str>> {
    let tools = req.tools.as_ref()?;
    match policy {
        ToolPolicy::All => None,
        ToolPolicy::None => Some(Vec::new()),
        ToolPolicy::Allow { tools: allowed, .. } => Some(
            tools
                .iter()
                .filter(|t| {
                    t.name
                        .as_deref()
                        .is_some_and(|n| allowed.iter().any(|a| a == n))
                })
                .map(|t| t.raw.get())
                .collect(),
        ),
    }
}

fn rewrite_to(
    req: &ChatRequest<'_>,
    variation: Option<&Variation>,
    model: &str,
    opts: RewriteOptions,
) -> Vec<u8> {
    let body_len: usize = req
        .fields
        .0
        .iter()
        .map(|(k, v)| k.len() + v.get().len() + 4)
        .chain(req.messages.iter().map(|m| m.raw.get().len() + 1))
        .sum::<usize>()
        + 16;
    let mut out = Vec::with_capacity(
        body_len
            + variation
                .and_then(|v| v.system_prompt.as_ref())
                .map_or(0, |(_, p)| p.len() + 40)
            + 64,
    );
    out.push(b'{');
    let mut first = true;

    // Tool policy: which tools survive, and whether tool_choice still makes sense.
    let kept = variation.and_then(|v| kept_tools(req, &v.tool_policy));
    let tools_removed_all = kept.as_ref().is_some_and(|k| k.is_empty());
    let drop_tool_choice = tools_removed_all
        || match (&kept, &req.tool_choice_function) {
            (Some(_), Some(name)) => {
                let allowed = match variation.map(|v| &v.tool_policy) {
                    Some(ToolPolicy::Allow { tools, .. }) => tools.iter().any(|t| t == name),
                    _ => true,
                };
                !allowed
            }
            _ => false,
        };
    let budget = variation.and_then(|v| v.token_budget).map(u64::from);
    let mut wrote_temperature = false;
    let mut wrote_budget = false;
    let mut wrote_stream_options = false;

    for (i, (key, raw)) in req.fields.0.iter().enumerate() {
        if i == req.messages_at {
            write_key(&mut out, &mut first, "messages");
            write_messages(&mut out, req, variation, opts.prompt_mode);
        }
        match key.as_ref() {
            "model" => {
                write_key(&mut out, &mut first, "model");
                write_json_str(&mut out, model);
            }
            "temperature" if variation.is_some_and(|v| v.temperature.is_some()) => {
                if let Some(t) = variation.and_then(|v| v.temperature) {
                    write_key(&mut out, &mut first, "temperature");
                    let _ = write!(out, "{t}");
                    wrote_temperature = true;
                }
            }
            "max_tokens" | "max_completion_tokens" if budget.is_some() => {
                let asked = if key == "max_tokens" {
                    req.max_tokens
                } else {
                    req.max_completion_tokens
                };
                if let Some(b) = budget {
                    write_key(&mut out, &mut first, key);
                    let _ = write!(out, "{}", asked.map_or(b, |a| a.min(b)));
                    wrote_budget = true;
                }
            }
            "tools" if kept.is_some() => {
                if let Some(k) = &kept {
                    if !k.is_empty() {
                        write_key(&mut out, &mut first, "tools");
                        out.push(b'[');
                        for (i, t) in k.iter().enumerate() {
                            if i > 0 {
                                out.push(b',');
                            }
                            out.extend_from_slice(t.as_bytes());
                        }
                        out.push(b']');
                    }
                }
            }
            "tool_choice" if drop_tool_choice => {}
            "parallel_tool_calls" if tools_removed_all => {}
            "stream_options" if opts.force_stream_usage && req.stream && !req.include_usage => {
                write_key(&mut out, &mut first, "stream_options");
                out.extend_from_slice(br#"{"include_usage":true}"#);
                wrote_stream_options = true;
            }
            _ => {
                write_key(&mut out, &mut first, key);
                out.extend_from_slice(raw.get().as_bytes());
            }
        }
    }
    if req.messages_at >= req.fields.0.len() {
        write_key(&mut out, &mut first, "messages");
        write_messages(&mut out, req, variation, opts.prompt_mode);
    }
    if let Some(t) = variation.and_then(|v| v.temperature) {
        if !wrote_temperature {
            write_key(&mut out, &mut first, "temperature");
            let _ = write!(out, "{t}");
        }
    }
    if let Some(b) = budget {
        if !wrote_budget {
            write_key(&mut out, &mut first, "max_tokens");
            let _ = write!(out, "{b}");
        }
    }
    if opts.force_stream_usage && req.stream && !req.include_usage && !wrote_stream_options {
        write_key(&mut out, &mut first, "stream_options");
        out.extend_from_slice(br#"{"include_usage":true}"#);
    }
    out.push(b'}');
    out
}

fn write_messages(
    out: &mut Vec<u8>,
    req: &ChatRequest<'_>,
    variation: Option<&Variation>,
    mode: PromptMode,
) {
    out.push(b'[');
    let mut first = true;
    let prompt = variation.and_then(|v| v.system_prompt.as_ref());
    if let Some((_, text)) = prompt {
        out.extend_from_slice(br#"{"role":"system","content":"#);
        write_json_str(out, text);
        out.push(b'}');
        first = false;
    }
    for m in &req.messages {
        let is_system = m.role == "system" || m.role == "developer";
        if prompt.is_some() && mode == PromptMode::Replace && is_system {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(m.raw.get().as_bytes());
    }
    out.push(b']');
}
