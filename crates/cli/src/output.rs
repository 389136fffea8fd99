//! Human and machine output: aligned tables, JSON/YAML objects, relative times.

use std::io::Write;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::cli::ObjOutput;

/// Prints rows as a left-aligned table with Ignite's column spacing.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    let line = |cells: Vec<&str>| -> String {
        let n = cells.len();
        let mut s = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            s.push_str(c);
            if i + 1 < n {
                s.push_str(&" ".repeat(widths[i] - c.chars().count() + 1));
            }
        }
        s
    };
    let _ = writeln!(out, "{}", line(header.to_vec()));
    for r in rows {
        let _ = writeln!(out, "{}", line(r.iter().map(String::as_str).collect()));
    }
}

/// Prints one object as JSON or YAML.
pub fn object<T: Serialize>(v: &T, fmt: ObjOutput) -> anyhow::Result<()> {
    match fmt {
        ObjOutput::Json => println!("{}", serde_json::to_string_pretty(v)?),
        ObjOutput::Yaml => print!("{}", serde_yaml::to_string(v)?),
    }
    Ok(())
}

/// "5s ago", "3m ago", "2h ago", "4d ago".
pub fn ago(t: Option<DateTime<Utc>>) -> String {
    let Some(t) = t else { return String::new() };
    let secs = (Utc::now() - t).num_seconds().max(0);
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// "Up 3m" style duration since `t`.
pub fn since(t: Option<DateTime<Utc>>) -> String {
    ago(t).trim_end_matches(" ago").to_string()
}

/// A spinner on stderr while long work runs; drawn only when stderr is a terminal and not -q.
pub fn spinner(msg: String, quiet: bool) -> indicatif::ProgressBar {
    let pb = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr())
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or(indicatif::ProgressStyle::default_spinner()),
    );
    pb.set_message(msg);
    pb.enable_steady_tick(std::time::Duration::from_millis(100));
    pb
}
