//! Server-sent events for `"stream": true`, ending with `data: [DONE]`.

use std::convert::Infallible;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::ApiError;
use super::openai::ResponseMeta;
use super::types::UsageBody;
use crate::engine::Event;

/// Which endpoint's chunk format to use.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    Chat,
    Text,
}

struct Chunker {
    kind: Kind,
    meta: ResponseMeta,
    include_usage: bool,
}

impl Chunker {
    fn chunk(&self, delta: Option<&str>, finish: Option<&str>, role: bool) -> Value {
        let (object, choice) = match self.kind {
            Kind::Chat => {
                let mut d = json!({});
                if role {
                    d["role"] = json!("assistant");
                }
                if let Some(text) = delta {
                    d["content"] = json!(text);
                }
                (
                    "chat.completion.chunk",
                    json!({"index": 0, "delta": d, "logprobs": null, "finish_reason": finish}),
                )
            }
            Kind::Text => (
                "text_completion",
                json!({"index": 0, "text": delta.unwrap_or(""), "logprobs": null, "finish_reason": finish}),
            ),
        };
        let mut v = json!({
            "id": self.meta.id,
            "object": object,
            "created": self.meta.created,
            "model": self.meta.model,
            "choices": [choice],
        });
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        v
    }

    fn usage_chunk(&self, usage: UsageBody) -> Value {
        let object = match self.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Text => "text_completion",
        };
        json!({
            "id": self.meta.id,
            "object": object,
            "created": self.meta.created,
            "model": self.meta.model,
            "choices": [],
            "usage": usage,
        })
    }

    fn events_for(&self, event: Event) -> Vec<Value> {
        match event {
            Event::Delta(text) => vec![self.chunk(Some(&text), None, false)],
            Event::Finished { reason, usage } => {
                let mut out = vec![self.chunk(None, Some(reason.as_str()), false)];
                if self.include_usage {
                    out.push(self.usage_chunk(usage.into()));
                }
                out
            }
            Event::Failed(e) => vec![ApiError(e).body()],
        }
    }
}

fn data(v: &Value) -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default().data(v.to_string()))
}

/// Streams the generation as OpenAI chunks. Dropping the stream (client gone) drops the
/// receiver, which cancels the generation in the engine.
pub(super) fn sse_response(
    kind: Kind,
    meta: ResponseMeta,
    rx: UnboundedReceiver<Event>,
    include_usage: bool,
) -> Response {
    let chunker = Chunker { kind, meta, include_usage };
    let first = match kind {
        Kind::Chat => vec![data(&chunker.chunk(Some(""), None, true))],
        Kind::Text => Vec::new(),
    };
    let body: std::pin::Pin<Box<dyn Stream<Item = Result<SseEvent, Infallible>> + Send>> = Box::pin(
        stream::iter(first)
            .chain(UnboundedReceiverStream::new(rx).flat_map(move |event| {
                stream::iter(chunker.events_for(event).iter().map(data).collect::<Vec<_>>())
            }))
            .chain(stream::once(async { Ok(SseEvent::default().data("[DONE]")) })),
    );
    Sse::new(body).keep_alive(KeepAlive::default()).into_response()
}
