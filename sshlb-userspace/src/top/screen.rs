//! Draws a [`Dashboard`] with ratatui: a header (interface, interval, table size, packets per
//! second by outcome, problems, keys), the services with their backends, and the drops by
//! reason. The same drawing serves the live terminal and `--once` (drawn into a buffer and
//! printed as plain text), so what a script reads is what an operator sees.

use std::time::Duration;

use ratatui::{
    buffer::Buffer,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Paragraph, Row, Table, Widget},
};

use super::model::{count, per_second, BackendRow, Dashboard, Figures, ServiceRow, ViewOptions};

/// One screen: the dashboard and what the operator chose to see.
pub struct Screen<'a> {
    /// The rows.
    pub dashboard: &'a Dashboard,
    /// Sort order and drop-reason filter (shown beside their keys).
    pub options: ViewOptions,
    /// The refresh interval.
    pub interval: Duration,
}

const BACKEND_HEADER: [&str; 11] = [
    "SERVICE/BACKEND",
    "ADDRESS",
    "HEALTH",
    "STATE",
    "WEIGHT",
    "RING",
    "LIVE",
    "FLOWS",
    "NEW/s",
    "PKTS/s",
    "BYTES/s",
];
/// Column widths after the name and the address, which fit their longest value.
const BACKEND_WIDTHS: [u16; 9] = [7, 8, 6, 4, 7, 7, 7, 8, 8];
/// Columns from LIVE on are numbers, right-aligned.
const FIRST_NUMBER: usize = 6;

impl Screen<'_> {
    fn header_lines(&self) -> Vec<Line<'static>> {
        let d = self.dashboard;
        let dim = Style::new().add_modifier(Modifier::DIM);
        let mut title = vec![
            Span::styled("sshlb top", Style::new().add_modifier(Modifier::BOLD)),
            Span::raw(format!(
                "  {}  every {:?}  {} flows in table",
                d.interface, self.interval, d.active_flows
            )),
        ];
        if d.maintenance {
            title.push(Span::styled(
                "  MAINTENANCE (VIPs withdrawn)",
                Style::new().fg(Color::Yellow),
            ));
        }
        title.push(Span::styled(
            format!(
                "    q quit  s sort: {}  z drop reasons: {}",
                self.options.sort.as_str(),
                if self.options.all_drops { "all" } else { "seen" }
            ),
            dim,
        ));
        let t = d.totals;
        let dropped = if t.dropped.unwrap_or(0.0) > 0.0 {
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
        } else {
            Style::new()
        };
        let mut lines = vec![
            Line::from(title),
            Line::from(vec![
                Span::raw(format!(
                    "packets {}/s  forwarded {}/s  passed {}/s  ",
                    per_second(t.packets),
                    per_second(t.forwarded),
                    per_second(t.passed)
                )),
                Span::styled(format!("dropped {}/s", per_second(t.dropped)), dropped),
            ]),
        ];
        for problem in &d.problems {
            lines.push(Line::styled(problem.clone(), Style::new().fg(Color::Red)));
        }
        lines
    }

    fn backend_rows(&self) -> Vec<Row<'static>> {
        let mut rows = Vec::new();
        for s in &self.dashboard.services {
            rows.push(service_row(s));
            rows.extend(s.backends.iter().map(backend_row));
        }
        rows
    }

    /// The name and address columns as wide as their longest value (no address is cut).
    fn backend_widths(&self) -> Vec<Constraint> {
        let services = &self.dashboard.services;
        let widest =
            |header: &str, service: fn(&ServiceRow) -> usize, backend: fn(&BackendRow) -> usize| {
                let rows = services.iter().flat_map(|s| {
                    std::iter::once(service(s)).chain(s.backends.iter().map(backend))
                });
                rows.chain([header.len()]).max().unwrap_or(0) as u16
            };
        let name = widest(BACKEND_HEADER[0], |s| s.name.len(), |b| b.name.len() + 2);
        let address = widest(BACKEND_HEADER[1], |s| s.address.len(), |b| b.address.len());
        [name, address].into_iter().chain(BACKEND_WIDTHS).map(Constraint::Length).collect()
    }

    /// Lines the whole screen needs (for `--once`).
    pub fn height(&self) -> u16 {
        let d = self.dashboard;
        let backends: usize = d.services.iter().map(|s| 1 + s.backends.len()).sum();
        let header = 2 + d.problems.len();
        // Blank line, block title, column header, rows; twice.
        (header + 3 + backends.max(1) + 3 + d.drops.len().max(1)) as u16
    }

    /// The screen as plain text, `width` columns wide, trailing blanks trimmed.
    pub fn text(&self, width: u16) -> String {
        let area = Rect::new(0, 0, width, self.height());
        let mut buf = Buffer::empty(area);
        self.render(area, &mut buf);
        let mut out = String::new();
        for y in 0..area.height {
            let line: String = (0..area.width).map(|x| buf[(x, y)].symbol()).collect();
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

fn number(text: String) -> Cell<'static> {
    Cell::from(Line::from(text).right_aligned())
}

/// The figure columns a service and a backend row share: LIVE, FLOWS, then NEW/s, PKTS/s and
/// BYTES/s.
fn figures(f: &Figures) -> [Cell<'static>; 5] {
    let [new, packets, bytes] = [f.new_flows, f.packets, f.bytes].map(per_second);
    [
        number(count(f.live_sessions)),
        number(count(f.active_flows)),
        number(new),
        number(packets),
        number(bytes),
    ]
}

fn service_row(s: &ServiceRow) -> Row<'static> {
    let mut cells = vec![
        Cell::from(s.name.clone()),
        Cell::from(s.address.clone()),
        Cell::from(s.mode.clone()),
        Cell::from(""),
        Cell::from(""),
        Cell::from(""),
    ];
    cells.extend(figures(&s.figures));
    Row::new(cells).style(Style::new().add_modifier(Modifier::BOLD))
}

fn backend_row(b: &BackendRow) -> Row<'static> {
    let health = match b.health.as_str() {
        "up" => Style::new().fg(Color::Green),
        "down" => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        _ => Style::new().fg(Color::Yellow),
    };
    let state = match b.state.as_str() {
        "active" => Style::new(),
        "drain" => Style::new().fg(Color::Yellow),
        _ => Style::new().add_modifier(Modifier::DIM),
    };
    let mut cells = vec![
        Cell::from(format!("  {}", b.name)),
        Cell::from(b.address.clone()),
        Cell::from(b.health.clone()).style(health),
        Cell::from(b.state.clone()).style(state),
        number(b.weight.to_string()),
        Cell::from(if b.in_ring { "yes" } else { "no" }),
    ];
    cells.extend(figures(&b.figures));
    Row::new(cells)
}

impl Widget for &Screen<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let d = self.dashboard;
        let header = self.header_lines();
        let backends: usize = d.services.iter().map(|s| 1 + s.backends.len()).sum();
        let [head, _, services, _, drops] = Layout::vertical([
            Constraint::Length(header.len() as u16),
            Constraint::Length(1),
            Constraint::Length(2 + backends.max(1) as u16),
            Constraint::Length(1),
            Constraint::Min(0),
        ])
        .areas(area);
        Paragraph::new(header).render(head, buf);

        let title = |text: &str| {
            Block::new()
                .borders(Borders::TOP)
                .title(Span::styled(format!(" {text} "), Style::new().add_modifier(Modifier::BOLD)))
        };
        let column_header = |names: &[&'static str], first_number: usize| {
            Row::new(names.iter().enumerate().map(|(i, n)| {
                if i >= first_number {
                    number((*n).to_owned())
                } else {
                    Cell::from(*n)
                }
            }))
            .style(Style::new().add_modifier(Modifier::REVERSED))
        };
        let rows = self.backend_rows();
        if rows.is_empty() {
            Paragraph::new("no services configured")
                .block(title("Services and backends"))
                .render(services, buf);
        } else {
            Table::new(rows, self.backend_widths())
                .header(column_header(&BACKEND_HEADER, FIRST_NUMBER))
                .block(title("Services and backends"))
                .render(services, buf);
        }

        let block = title("Drops by reason");
        if d.drops.is_empty() {
            Paragraph::new("no drops since the data plane was attached")
                .block(block)
                .render(drops, buf);
        } else {
            let rows = d.drops.iter().map(|r| {
                let style = if r.per_second.unwrap_or(0.0) > 0.0 {
                    Style::new().fg(Color::Red)
                } else {
                    Style::new()
                };
                Row::new([
                    Cell::from(r.reason),
                    number(per_second(r.per_second)),
                    number(count(r.total)),
                ])
                .style(style)
            });
            Table::new(
                rows,
                [Constraint::Length(28), Constraint::Length(8), Constraint::Length(12)],
            )
            .header(column_header(&["REASON", "/s", "TOTAL"], 1))
            .block(block)
            .render(drops, buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::model::{DropRow, Totals};

    fn dashboard() -> Dashboard {
        let backend = |name: &str, health: &str, state: &str, weight, live, packets| BackendRow {
            name: name.into(),
            address: format!("198.18.0.1{}:22", &name[1..]),
            health: health.into(),
            state: state.into(),
            weight,
            in_ring: weight > 0 && state == "active" && health == "up",
            figures: Figures {
                live_sessions: live,
                active_flows: live,
                new_flows: Some(0.0),
                packets,
                bytes: packets.map(|p| p * 80.0),
            },
        };
        Dashboard {
            interface: "eth0".into(),
            elapsed: Some(Duration::from_secs(1)),
            active_flows: 5,
            maintenance: false,
            totals: Totals {
                packets: Some(1234.0),
                forwarded: Some(1200.0),
                passed: Some(30.0),
                dropped: Some(4.0),
            },
            services: vec![ServiceRow {
                name: "git".into(),
                address: "198.18.0.100:22".into(),
                mode: "nat".into(),
                figures: Figures {
                    live_sessions: 5,
                    active_flows: 5,
                    new_flows: Some(0.0),
                    packets: Some(1200.0),
                    bytes: Some(96_000.0),
                },
                backends: vec![
                    backend("b1", "up", "active", 100, 5, Some(1200.0)),
                    backend("b2", "down", "drain", 7, 0, None),
                ],
            }],
            drops: vec![DropRow { reason: "drop_acl_denied", per_second: Some(4.0), total: 12 }],
            problems: vec!["agent not answering, showing its last answer: refused".into()],
        }
    }

    #[test]
    fn plain_text_has_one_row_per_backend_in_columns() {
        let d = dashboard();
        let screen = Screen {
            dashboard: &d,
            options: ViewOptions::default(),
            interval: Duration::from_secs(1),
        };
        let text = screen.text(160);
        assert_eq!(text.lines().count(), usize::from(screen.height()), "{text}");
        let row = |name: &str| -> Vec<String> {
            let line = text
                .lines()
                .find(|l| l.split_whitespace().next() == Some(name))
                .unwrap_or_else(|| panic!("no row {name}:\n{text}"));
            line.split_whitespace().map(str::to_owned).collect()
        };
        assert_eq!(
            row("b1"),
            ["b1", "198.18.0.11:22", "up", "active", "100", "yes", "5", "5", "0", "1200", "96000"]
        );
        assert_eq!(
            row("b2"),
            ["b2", "198.18.0.12:22", "down", "drain", "7", "no", "0", "0", "0", "-", "-"]
        );
        assert_eq!(row("git"), ["git", "198.18.0.100:22", "nat", "5", "5", "0", "1200", "96000"]);
        assert_eq!(row("drop_acl_denied"), ["drop_acl_denied", "4.0", "12"]);
        assert!(
            text.contains("packets 1234/s  forwarded 1200/s  passed 30/s  dropped 4.0/s"),
            "{text}"
        );
        assert!(text.contains("agent not answering, showing its last answer: refused"), "{text}");
        assert!(text.starts_with("sshlb top  eth0  every 1s  5 flows in table"), "{text}");
    }

    #[test]
    fn an_empty_agent_says_so_instead_of_drawing_empty_tables() {
        let d = Dashboard { interface: "eth0".into(), ..Dashboard::default() };
        let screen = Screen {
            dashboard: &d,
            options: ViewOptions::default(),
            interval: Duration::from_secs(2),
        };
        let text = screen.text(100);
        assert!(text.contains("no services configured"), "{text}");
        assert!(text.contains("no drops since the data plane was attached"), "{text}");
        assert!(text.contains("packets -/s"), "{text}");
    }
}
