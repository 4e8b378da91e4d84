//! The live screen: server, process, then per session its timing error and network latency
//! percentiles, its windows, its clients, and the thresholds it crosses.

use std::fmt::Write as _;

use crate::alerts::{Thresholds, Violation};
use crate::model::{drop_rate, Latency, Report, Session};

/// ANSI styling, or none.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    /// Whether to emit colour codes.
    pub color: bool,
}

impl Style {
    fn paint(self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
    fn bold(self, text: &str) -> String {
        self.paint("1", text)
    }
    fn red(self, text: &str) -> String {
        self.paint("1;31", text)
    }
    fn green(self, text: &str) -> String {
        self.paint("32", text)
    }
    fn yellow(self, text: &str) -> String {
        self.paint("33", text)
    }
    fn dim(self, text: &str) -> String {
        self.paint("2", text)
    }
}

/// The previous poll, for per-second rates.
pub struct Previous<'a> {
    /// What it returned.
    pub report: &'a Report,
    /// Seconds between it and this one (by the server's timestamps).
    pub seconds: f64,
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in binary units.
pub fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} {}", UNITS[0])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Bits per second in decimal units.
pub fn bits_per_second(bps: f64) -> String {
    if bps >= 1e9 {
        format!("{:.2} Gbit/s", bps / 1e9)
    } else if bps >= 1e6 {
        format!("{:.2} Mbit/s", bps / 1e6)
    } else if bps >= 1e3 {
        format!("{:.1} kbit/s", bps / 1e3)
    } else {
        format!("{bps:.0} bit/s")
    }
}

/// Seconds as `1d 02:03:04` / `02:03:04`.
pub fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d {h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(unix: f64) -> String {
    let secs = unix.max(0.0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn ms(value: Option<f64>) -> String {
    match value {
        Some(v) if v >= 100.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.3}"),
        None => "-".into(),
    }
}

/// Columns of the latency tables: label, count, then mean, std, min, p50, p90, p99, p99.9, max.
fn latency_cells(label: &str, count: &str, cells: [&str; 8]) -> String {
    let [mean, std, min, p50, p90, p99, p999, max] = cells;
    format!(
        "  {label:<16}{count:>10} {mean:>9} {std:>9} {min:>9} {p50:>9} {p90:>9} {p99:>9} {p999:>9} {max:>9}"
    )
}

fn latency_row(out: &mut String, label: &str, l: &Latency) {
    let count = l.count.map(thousands).unwrap_or_else(|| "-".into());
    let cells = [
        ms(Some(l.mean)),
        ms(Some(l.std)),
        ms(l.min),
        ms(l.p50),
        ms(l.p90),
        ms(l.p99),
        ms(l.p999),
        ms(Some(l.max)),
    ];
    let _ = writeln!(
        out,
        "{}",
        latency_cells(label, &count, cells.each_ref().map(String::as_str))
    );
}

/// Columns of the client table.
fn client_cells(cells: [&str; 13]) -> String {
    let [id, remote, format, age, sent, dropped, ring, total, bandwidth, p50, p99, max, wait] =
        cells;
    format!(
        "  {id:>6} {remote:<22}{format:<8}{age:>9} {sent:>10} {dropped:>8} {ring:>9} {total:>10} {bandwidth:>14} {p50:>9} {p99:>9} {max:>9} {wait:>10}"
    )
}

/// The whole screen.
pub fn screen(
    report: &Report,
    previous: Option<&Previous<'_>>,
    target: &str,
    thresholds: &Thresholds,
    violations: &[Violation],
    style: Style,
) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let g = &report.metrics;
    let _ = writeln!(
        out,
        "{} {} at {}   {}",
        style.bold(&report.service),
        report.version,
        target,
        utc(report.timestamp)
    );
    let mut line = format!(
        "sessions {} (active {})   clients {}",
        g.total_sessions, g.active_sessions, g.total_connections
    );
    if let Some(opened) = g.connections_opened {
        let _ = write!(line, "   connections opened {}", thousands(opened));
    }
    let uptime = report
        .process
        .and_then(|p| p.uptime_seconds)
        .or(g.uptime_seconds);
    if let Some(up) = uptime {
        let _ = write!(line, "   up {}", duration(up));
    }
    let _ = writeln!(out, "{line}");
    if let Some(p) = report.process {
        let mut line = format!(
            "process: RSS {}   CPU {:.1} s",
            bytes(p.rss_bytes as f64),
            p.cpu_seconds
        );
        let before = previous.and_then(|prev| prev.report.process.map(|pp| (pp, prev.seconds)));
        if let Some((pp, dt)) = before.filter(|(_, dt)| *dt > 0.0) {
            let _ = write!(
                line,
                " ({:.1} % of a core)",
                (p.cpu_seconds - pp.cpu_seconds) / dt * 100.0
            );
        }
        let _ = write!(line, "   threads {}", p.threads);
        if let Some(dataset) = g.dataset_bytes {
            let _ = write!(line, "   dataset {}", bytes(dataset as f64));
        }
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(
        out,
        "{}",
        style.dim(&format!("alerts when {}", thresholds.describe()))
    );
    if g.sessions.is_empty() {
        let _ = writeln!(out, "\n  no sessions");
    }
    let windows: &[&str] = match thresholds.span.window_key() {
        Some(key) if key != "1m" => &["1m", key],
        _ => &["1m"],
    };
    for (code, session) in &g.sessions {
        let before =
            previous.and_then(|p| p.report.metrics.sessions.get(code).map(|s| (s, p.seconds)));
        let mine: Vec<&Violation> = violations
            .iter()
            .filter(|v| v.session.as_deref() == Some(code.as_str()))
            .collect();
        let block = Block {
            now: report.timestamp,
            code,
            session,
            before,
            violations: &mine,
            windows,
        };
        block.write(&mut out, style);
    }
    let global: Vec<&Violation> = violations.iter().filter(|v| v.session.is_none()).collect();
    if !global.is_empty() {
        let _ = writeln!(out);
        for v in global {
            let _ = writeln!(out, "{}", style.red(&format!("ALERT {v}")));
        }
    }
    out
}

/// One session's part of the screen.
struct Block<'a> {
    now: f64,
    code: &'a str,
    session: &'a Session,
    before: Option<(&'a Session, f64)>,
    violations: &'a [&'a Violation],
    windows: &'a [&'a str],
}

impl Block<'_> {
    fn write(&self, out: &mut String, style: Style) {
        let s = self.session;
        let status = if s.is_paused {
            style.yellow("paused")
        } else if s.is_running {
            style.green("running")
        } else {
            style.dim("stopped")
        };
        let mark = if self.violations.is_empty() {
            String::new()
        } else {
            style.red("  [ALERT]")
        };
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{} {}  {status}  clients {}  memory {:.2} MB{mark}",
            style.bold("SESSION"),
            self.code,
            s.connections,
            s.memory_usage_mb
        );
        let mut line = String::from("  ");
        if let Some(generated) = s.packets_generated {
            let _ = write!(line, "generated {}   ", thousands(generated));
        }
        let _ = write!(
            line,
            "sent {}   dropped {} ({:.3} %)",
            thousands(s.packets_sent),
            thousands(s.dropped_packets),
            drop_rate(s.packets_sent, s.dropped_packets) * 100.0
        );
        if let Some((prev, dt)) = self.before.filter(|(_, dt)| *dt > 0.0) {
            let _ = write!(
                line,
                "   now {:.1} sent/s, {:.1} dropped/s",
                s.packets_sent.saturating_sub(prev.packets_sent) as f64 / dt,
                s.dropped_packets.saturating_sub(prev.dropped_packets) as f64 / dt
            );
        }
        if let Some(total) = s.bytes_sent {
            let _ = write!(line, "   {}", bytes(total as f64));
        }
        if let Some(bps) = s.bandwidth_bps {
            let _ = write!(line, "   {}", bits_per_second(bps));
        }
        if let Some(closed) = s.connections_closed.filter(|n| *n > 0) {
            let _ = write!(line, "   clients gone {closed}");
        }
        if let Some(stalled) = s.clients_stalled.filter(|n| *n > 0) {
            let _ = write!(
                line,
                "   {}",
                style.red(&format!("closed as stalled {stalled}"))
            );
        }
        if let Some(resets) = s.schedule_resets.filter(|n| *n > 0) {
            let _ = write!(
                line,
                "   {}",
                style.red(&format!("schedule resets {resets}"))
            );
        }
        let _ = writeln!(out, "{line}");
        let header = latency_cells(
            "ms",
            "count",
            ["mean", "std", "min", "p50", "p90", "p99", "p99.9", "max"],
        );
        let _ = writeln!(out, "{}", style.dim(&header));
        latency_row(out, "timing error", &s.timing_error_ms);
        latency_row(out, "network latency", &s.network_latency_ms);
        // The last minute, and the window the thresholds judge if it is another one.
        for name in self.windows {
            if let Some(w) = s.windows.get(*name) {
                latency_row(out, &format!("  timing {name}"), &w.timing_error_ms);
                latency_row(out, &format!("  network {name}"), &w.network_latency_ms);
            }
        }
        if !s.clients.is_empty() {
            let header = client_cells([
                "client",
                "remote",
                "format",
                "for",
                "sent",
                "dropped",
                "ring hw",
                "bytes",
                "bandwidth",
                "net p50",
                "net p99",
                "net max",
                "wait p99",
            ]);
            let _ = writeln!(out, "{}", style.dim(&header));
        }
        for c in &s.clients {
            let ring = match c.ring_capacity {
                Some(cap) => format!("{}/{cap}", c.ring_high_water),
                None => c.ring_high_water.to_string(),
            };
            let cells = [
                c.id.to_string(),
                c.remote.clone(),
                c.format.clone(),
                duration(self.now - c.connected_at),
                thousands(c.packets_sent),
                thousands(c.dropped_packets),
                ring,
                bytes(c.bytes_sent as f64),
                bits_per_second(c.bandwidth_bps),
                ms(c.network_latency_ms.p50),
                ms(c.network_latency_ms.p99),
                ms(Some(c.network_latency_ms.max)),
                ms(c.ring_wait_ms.and_then(|w| w.p99)),
            ];
            let row = client_cells(cells.each_ref().map(String::as_str));
            let flagged = self.violations.iter().any(|v| v.client == Some(c.id));
            let _ = writeln!(out, "{}", if flagged { style.red(&row) } else { row });
            if let Some(d) = &c.decoder {
                let _ = writeln!(
                    out,
                    "    decoder: round trip p50 {} p99 {} ms, velocity error mean {:.1} p99 {} mm/s, matched {} late {} malformed {}",
                    ms(d.round_trip_ms.p50),
                    ms(d.round_trip_ms.p99),
                    d.velocity_error.mean,
                    ms(d.velocity_error.p99),
                    thousands(d.matched),
                    thousands(d.late),
                    thousands(d.malformed),
                );
            }
        }
        for v in self.violations {
            let _ = writeln!(out, "  {}", style.red(&format!("ALERT {v}")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(bits_per_second(2.5e6), "2.50 Mbit/s");
        assert_eq!(duration(3725.0), "01:02:05");
        assert_eq!(utc(0.0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_767_225_600.5), "2026-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400.0), "2000-02-29 00:00:00 UTC");
    }
}
