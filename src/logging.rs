//! Log output through `tracing`: human-friendly on a terminal; under systemd
//! (stderr connected to the journal), one line per event with an sd-daemon
//! priority prefix (`<6>`) and no timestamp, since journald adds its own.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
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

/// The filter: `RUST_LOG` when set and valid (directives `target=level`
/// and a bare default `level`, comma-separated: `pichat=debug,hyper=info,warn`),
/// else `pichat={level}` and `warn` for everything else. A `RUST_LOG` that does
/// not parse is reported once on stderr and ignored.
fn filter(level: &str) -> Targets {
    let default = || {
        format!("pichat={level},warn")
            .parse()
            .unwrap_or_else(|_| Targets::new().with_default(Level::INFO))
    };
    match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => v.parse().unwrap_or_else(|e| {
            eprintln!("pichat: ignoring RUST_LOG={v:?}: {e} (e.g. RUST_LOG=pichat=debug,warn)");
            default()
        }),
        _ => default(),
    }
}

/// Installs the global subscriber. `RUST_LOG` overrides `level`.
/// Safe to call more than once (later calls do nothing).
pub fn init(level: &str, format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let journald = match format {
        LogFormat::Journald => true,
        LogFormat::Human => false,
        LogFormat::Auto => under_journald(),
    };
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter(level));
    let _ = if journald {
        registry.with(layer.event_format(Journald)).try_init()
    } else {
        use std::io::IsTerminal;
        registry
            .with(
                layer
                    .with_target(false)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .try_init()
    };
}
