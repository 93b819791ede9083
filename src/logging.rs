//! Log output through `tracing`: human-friendly on a terminal; under systemd
//! (stderr connected to the journal), one line per event with an sd-daemon
//! priority prefix (`<6>`) and no timestamp, since journald adds its own.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// True when stderr is the systemd journal (systemd sets `JOURNAL_STREAM`).
pub fn under_journald() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some()
}

/// Formats events as `<PRIORITY>target: message key=value`.
struct Journald;

impl<S, N> FormatEvent<S, N> for Journald
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let prio = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        write!(w, "<{prio}>")?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                write!(w, "{}: ", span.name())?;
            }
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// Installs the global subscriber. `RUST_LOG` overrides `level`.
/// Safe to call more than once (later calls do nothing).
pub fn init(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("pichat={level},warn")));
    let journald = match format {
        LogFormat::Journald => true,
        LogFormat::Human => false,
        LogFormat::Auto => under_journald(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if journald {
        builder.event_format(Journald).try_init()
    } else {
        use std::io::IsTerminal;
        builder
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
}
