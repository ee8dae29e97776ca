//! Printing helpers: summaries as aligned tables or JSON lines.

use rustworthy::core::progress::{emit_json, ProgressMode};
use rustworthy::table::render;

/// In JSON-lines mode, emits `metrics` as the run's summary event and returns true.
pub fn emit_summary(mode: ProgressMode, metrics: &rustworthy::serde_json::Value) -> bool {
    if mode == ProgressMode::JsonLines {
        emit_json("summary", metrics.clone());
        true
    } else {
        false
    }
}

/// Prints `(label, value)` pairs as a two-column table.
pub fn print_pairs(pairs: &[(String, String)]) {
    let rows: Vec<Vec<String>> = pairs
        .iter()
        .map(|(k, v)| vec![k.clone(), v.clone()])
        .collect();
    println!("{}", render(&["metric", "value"], &rows));
}

/// Message format: the text alone for information and debugging, `warning: `/`error: ` before
/// warnings and errors (as compilers and most command-line tools print them).
pub struct Plain;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for Plain
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut w: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        match *event.metadata().level() {
            tracing::Level::ERROR => write!(w, "error: ")?,
            tracing::Level::WARN => write!(w, "warning: ")?,
            _ => {}
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}
