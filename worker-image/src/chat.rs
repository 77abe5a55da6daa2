//! Chat templates: the model's Jinja template (a subset, rendered with minijinja), ChatML
//! when the model ships none.

use minijinja::{Environment, ErrorKind, context};
use serde::{Deserialize, Serialize};

use crate::WorkerError;

/// ChatML, used when the model has no chat template.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// One chat message.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text; OpenAI clients may send `null` for assistant turns.
    #[serde(default)]
    pub content: MessageContent,
    /// Optional participant name (accepted, not used by the templates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Message content: a string or a list of `{"type":"text","text":...}` parts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Content parts; only text parts are supported.
    Parts(Vec<ContentPart>),
    /// No content.
    #[default]
    None,
}

/// One part of a multi-part message.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ContentPart {
    /// Must be `text`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a text part.
    #[serde(default)]
    pub text: Option<String>,
}

impl MessageContent {
    /// The text, with parts joined; errors on non-text parts.
    pub fn text(&self) -> Result<String, WorkerError> {
        match self {
            Self::Text(t) => Ok(t.clone()),
            Self::None => Ok(String::new()),
            Self::Parts(parts) => parts
                .iter()
                .map(|p| match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => Ok(t.as_str()),
                    (kind, _) => Err(WorkerError::InvalidRequest(format!(
                        "content part of type '{kind}' is not supported; only text parts are"
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|v| v.concat()),
        }
    }
}

/// Renders `messages` with `template` (or ChatML), ending with the assistant's turn prefix.
pub fn render(
    template: Option<&str>,
    messages: &[ChatMessage],
    bos_token: &str,
    eos_token: &str,
) -> Result<String, WorkerError> {
    #[derive(Serialize)]
    struct Msg {
        role: String,
        content: String,
    }
    let msgs = messages
        .iter()
        .map(|m| Ok(Msg { role: m.role.clone(), content: m.content.text()? }))
        .collect::<Result<Vec<_>, WorkerError>>()?;
    let mut env = Environment::new();
    env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
        Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
    });
    let source = template.unwrap_or(CHATML_TEMPLATE);
    let tmpl = env.template_from_str(source).map_err(|e| {
        WorkerError::Inference(format!("the model's chat template is invalid: {e}"))
    })?;
    tmpl.render(context! {
        messages => msgs,
        add_generation_prompt => true,
        bos_token => bos_token,
        eos_token => eos_token,
    })
    .map_err(|e| WorkerError::InvalidRequest(format!("cannot apply the chat template: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, text: &str) -> ChatMessage {
        ChatMessage { role: role.into(), content: MessageContent::Text(text.into()), name: None }
    }

    #[test]
    fn chatml_renders_roles_and_generation_prompt() {
        let out =
            render(None, &[msg("system", "S"), msg("user", "Hi")], "", "").unwrap_or_default();
        assert_eq!(
            out,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn raise_exception_in_template_is_a_bad_request() {
        let t = "{{ raise_exception('roles must alternate') }}";
        let err = render(Some(t), &[msg("user", "x")], "", "").err();
        assert!(
            matches!(err, Some(WorkerError::InvalidRequest(m)) if m.contains("roles must alternate"))
        );
    }
}
