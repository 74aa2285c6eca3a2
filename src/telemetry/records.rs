//! Disconnect records: the OpenTelemetry side of the `websocket.connection` span, built once,
//! when the connection ends, and only if it is kept.
//!
//! Through `tracing-opentelemetry` a connection span was an SDK span from its first moment: ids,
//! sampler, attributes behind a lock, ten recorded fields each taking that lock again, then
//! conversion, encoding and sending. For the brief connections of a churn that was most of what
//! export added to a connect-chat-disconnect cycle (1.6× the CPU of export off), and sampling at
//! the end could not take it back. This layer owns the connection span instead:
//!
//! - [`open`] draws the ids (the caller's trace id instead, given one from `traceparent`) before
//!   the span is created; while it is open the record keeps the events that reach traces (at
//!   most [`MAX_EVENTS`]);
//! - at the end the connection's owner calls [`finish`]: it decides whether the record is kept
//!   and, only if so, adds its attributes (ids, client, reason, codes, counts) directly, not as
//!   span fields every layer would see;
//! - when the span closes, a kept record becomes a finished span (`SpanData`) handed straight
//!   to the export pipeline's processor (the priority admission of `span_queue`, then the
//!   batch), the one the tracer's provider ends in.
//!
//! Which records are kept is the monitor's decision (it knows the outcome, see
//! `monitor::guard`): every abnormal disconnect, every connection that lasted long enough to
//! have its `websocket.open` span, every one joining a sampled caller's trace, and a configured
//! share of the rest (`sampling::BriefShare`). Bound: one record per open connection, its attributes
//! fixed by the span's fields plus ten, its events at most [`MAX_EVENTS`].

use std::any::TypeId;
use std::cell::RefCell;
use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::trace::{Event, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SpanData, SpanEvents, SpanLinks};
use opentelemetry_sdk::trace::{SdkTracer, SpanProcessor};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Dispatch, Event as TracingEvent, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use super::names::spans;

/// Events kept on one disconnect record (the SDK's default per-span limit); later ones are
/// counted as dropped.
pub const MAX_EVENTS: usize = 128;

/// Where traces go: the tracer for the spans built through `tracing-opentelemetry`, and the
/// processor that disconnect records are handed to (the same pipeline the tracer's provider
/// ends in).
#[derive(Clone)]
pub struct Traces {
    pub tracer: SdkTracer,
    pub records: Arc<dyn SpanProcessor>,
}

/// The layer (see the module docs). Sees `websocket.connection` spans and the events that reach
/// traces, nothing else.
pub struct ConnectionRecords {
    records: Arc<dyn SpanProcessor>,
    scope: InstrumentationScope,
    access: Access,
}

/// Reaches a span's [`Record`] from outside the layer (see [`with_record`]): the subscriber is
/// asked for this through `downcast_ref`, as `tracing-opentelemetry` does for its own data.
#[derive(Clone, Copy)]
struct Access(AccessFn);

/// Finds a span's record and runs the callback on it.
type AccessFn = fn(&Dispatch, &Id, &mut dyn FnMut(&mut Record));

/// What a connection span will become, kept in the span's extensions while it is open.
struct Record {
    context: SpanContext,
    /// The caller's span, from `traceparent`.
    parent: Option<SpanContext>,
    start: SystemTime,
    attributes: Vec<KeyValue>,
    events: Vec<Event>,
    dropped_events: u32,
    status: Status,
    keep: bool,
    /// Its `websocket.open` span was recorded (the connection lasted).
    opened: bool,
}

/// What decides whether a normal disconnect's record is kept, besides the share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// The connection's `websocket.open` span was recorded: the trace already has a child.
    pub opened: bool,
    /// The connection joined a caller's trace that is sampled.
    pub parent_sampled: bool,
}

impl ConnectionRecords {
    /// A layer handing its records to `records`, for subscribers built on
    /// `tracing_subscriber::Registry`.
    pub fn new(records: Arc<dyn SpanProcessor>) -> Self {
        Self {
            records,
            scope: InstrumentationScope::builder("wsmon").build(),
            access: Access(access::<tracing_subscriber::Registry>),
        }
    }

    /// Whether this layer owns `metadata`'s span.
    pub fn owns(metadata: &tracing::Metadata<'_>) -> bool {
        metadata.is_span() && metadata.name() == spans::CONNECTION
    }
}

fn access<S>(dispatch: &Dispatch, id: &Id, f: &mut dyn FnMut(&mut Record))
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let Some(subscriber) = dispatch.downcast_ref::<S>() else {
        return;
    };
    let Some(span) = subscriber.span(id) else {
        return;
    };
    let mut extensions = span.extensions_mut();
    if let Some(record) = extensions.get_mut::<Record>() {
        f(record);
    }
}

/// Runs `f` on `span`'s record; `None` when it has none (no records layer, or not a
/// connection span).
fn with_record<T>(span: &tracing::Span, f: impl FnOnce(&mut Record) -> T) -> Option<T> {
    let mut f = Some(f);
    let mut out = None;
    span.with_subscriber(|(id, dispatch)| {
        if let Some(access) = dispatch.downcast_ref::<Access>() {
            (access.0)(dispatch, id, &mut |record| {
                if let Some(f) = f.take() {
                    out = Some(f(record));
                }
            });
        }
    });
    out
}

/// The span context `span`'s record will carry; `None` when it has no record.
pub fn span_context(span: &tracing::Span) -> Option<SpanContext> {
    with_record(span, |r| r.context.clone())
}

thread_local! {
    /// The ids (and caller's span) of the connection span [`open`] is creating on this thread,
    /// for the layer's `on_new_span` to take.
    static PENDING: RefCell<Option<(SpanContext, Option<SpanContext>)>> =
        const { RefCell::new(None) };
}

/// Creates a connection span with `create`, which is given the span context its record will
/// carry (for the span's `trace_id` and `span_id` fields), or `None` when no records layer is
/// installed. A valid `parent` (the caller's span from `traceparent`) makes the record join its
/// trace. Returns the span and its record's context.
///
/// The ids are drawn here, before the span exists, so they are fields from the start: recording
/// them afterwards was two more dispatches through every layer for each connection.
pub fn open(
    parent: Option<SpanContext>,
    create: impl FnOnce(Option<&SpanContext>) -> tracing::Span,
) -> (tracing::Span, Option<SpanContext>) {
    if !tracing::dispatcher::get_default(|d| d.is::<Access>()) {
        return (create(None), None);
    }
    let parent = parent.filter(SpanContext::is_valid);
    let ids = RandomIdGenerator::default();
    let context = SpanContext::new(
        parent
            .as_ref()
            .map_or_else(|| ids.new_trace_id(), |p| p.trace_id()),
        ids.new_span_id(),
        TraceFlags::SAMPLED,
        false,
        parent
            .as_ref()
            .map_or(TraceState::NONE, |p| p.trace_state().clone()),
    );
    PENDING.with(|p| *p.borrow_mut() = Some((context.clone(), parent)));
    let span = create(Some(&context));
    // Still there when the layer did not see the span (filtered out): then it has no record.
    let untaken = PENDING.with(|p| p.borrow_mut().take()).is_some();
    (span, (!untaken).then_some(context))
}

/// Notes that `span`'s `websocket.open` span was recorded.
pub fn mark_opened(span: &tracing::Span) {
    with_record(span, |r| r.opened = true);
}

/// Completes `span`'s record at the connection's end, before the span closes: `keep` decides,
/// with its [`Facts`], whether it is exported; if so, `attributes` adds its attributes (all of
/// them: the span's own fields are for the logs) and the status is set (ERROR when `abnormal`,
/// else OK). Returns the decision, or `None` when `span` has no record (nothing is exported
/// either way).
pub fn finish(
    span: &tracing::Span,
    keep: impl FnOnce(Facts) -> bool,
    attributes: impl FnOnce(&mut Vec<KeyValue>),
    abnormal: bool,
) -> Option<bool> {
    with_record(span, |r| {
        let facts = Facts {
            opened: r.opened,
            parent_sampled: r.parent.as_ref().is_some_and(|p| p.is_sampled()),
        };
        r.keep = keep(facts);
        if r.keep {
            attributes(&mut r.attributes);
            r.status = if abnormal {
                Status::error("")
            } else {
                Status::Ok
            };
        }
        r.keep
    })
}

/// Collects an event's fields as OpenTelemetry attributes, its message as the name.
struct Fields<'a> {
    attributes: &'a mut Vec<KeyValue>,
    message: Option<String>,
}

impl Fields<'_> {
    fn push(&mut self, field: &Field, value: Value) {
        match field.name() {
            "message" => self.message = Some(value.as_str().into_owned()),
            name => self.attributes.push(KeyValue::new(name, value)),
        }
    }
}

impl Visit for Fields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, i64::try_from(value).unwrap_or(i64::MAX).into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, value.to_owned().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.push(field, format!("{value:?}").into());
    }
}

impl<S> Layer<S> for ConnectionRecords
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if !Self::owns(attrs.metadata()) {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        // Only a span created through `open` gets a record: its ids are drawn there.
        let Some((context, parent)) = PENDING.with(|p| p.borrow_mut().take()) else {
            return;
        };
        span.extensions_mut().insert(Record {
            context,
            parent,
            start: SystemTime::now(),
            attributes: Vec::new(),
            events: Vec::new(),
            dropped_events: 0,
            status: Status::Unset,
            keep: true,
            opened: false,
        });
    }

    fn on_event(&self, event: &TracingEvent<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.event_span(event) else {
            return;
        };
        let mut extensions = span.extensions_mut();
        let Some(record) = extensions.get_mut::<Record>() else {
            return;
        };
        if record.events.len() >= MAX_EVENTS {
            record.dropped_events += 1;
            return;
        }
        let level = event.metadata().level().as_str();
        let mut attributes = vec![KeyValue::new("level", level)];
        let mut fields = Fields {
            attributes: &mut attributes,
            message: None,
        };
        event.record(&mut fields);
        let name = fields
            .message
            .take()
            .unwrap_or_else(|| event.metadata().name().to_owned());
        record
            .events
            .push(Event::new(name, SystemTime::now(), attributes, 0));
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(record) = span.extensions_mut().remove::<Record>() else {
            return;
        };
        if !record.keep {
            return;
        }
        let (parent_span_id, parent_span_is_remote) = match &record.parent {
            Some(p) => (p.span_id(), true),
            None => (SpanId::INVALID, false),
        };
        let mut events = SpanEvents::default();
        events.events = record.events;
        events.dropped_count = record.dropped_events;
        self.records.on_end(SpanData {
            span_context: record.context,
            parent_span_id,
            parent_span_is_remote,
            span_kind: SpanKind::Server,
            name: spans::CONNECTION.into(),
            start_time: record.start,
            end_time: SystemTime::now(),
            attributes: record.attributes,
            dropped_attributes_count: 0,
            events,
            links: SpanLinks::default(),
            status: record.status,
            instrumentation_scope: self.scope.clone(),
        });
    }

    unsafe fn downcast_raw(&self, id: TypeId) -> Option<*const ()> {
        if id == TypeId::of::<Self>() {
            Some(self as *const Self as *const ())
        } else if id == TypeId::of::<Access>() {
            Some(&self.access as *const Access as *const ())
        } else {
            None
        }
    }
}
