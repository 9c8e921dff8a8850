//! The one-shot tables of `status`, `plan` and `snapshots`: plain columns under a header, laid
//! out by comfy-table to the terminal's width (80 columns when stdout is not a terminal) with
//! display-width-correct alignment (a wide character takes two columns).
//!
//! The first column names the row (host, check, snapshot): it is as wide as its longest name
//! when that takes at most half the width, and never narrower than its longest word, so a name
//! is never split and every row starts with its name. The columns between are never narrower
//! than their widest word, so a time, a version or a state is never split; only the last
//! column, free text, may split a word longer than what is left. Cells wrap at spaces instead
//! of being cut, because a `plan` detail or a snapshot's "why" carries the fix. When the names are too wide for the other columns to keep
//! a readable width beside them (a snapshot's name is 44 columns), each name goes on a line of
//! its own and the rest of its row below it, indented. `--json` has every value on one line.

use comfy_table::{presets, ColumnConstraint, ContentArrangement, Table, Width};
use unicode_width::UnicodeWidthStr;

/// Columns are separated by this many spaces.
const GAP: usize = 2;
/// The indentation of a row's other cells under its name when names have lines of their own.
const INDENT: &str = "  ";
/// Marks the first line of each row in a table without its names (zero display width).
const ROW_START: char = '\u{200B}';

/// Prints `rows` under `header`, fitted to the terminal's width.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    for line in table_lines(header, rows, super::live::width()) {
        println!("{line}");
    }
}

/// The widest word of column `i` (header included), in display columns.
fn widest_word(header: &[&str], rows: &[Vec<String>], i: usize) -> usize {
    header
        .get(i)
        .copied()
        .into_iter()
        .chain(rows.iter().filter_map(|r| r.get(i).map(String::as_str)))
        .flat_map(str::split_whitespace)
        .map(UnicodeWidthStr::width)
        .max()
        .unwrap_or(0)
}

/// The lines of the table for a terminal `width` columns wide, without trailing spaces.
pub fn table_lines(header: &[&str], rows: &[Vec<String>], width: usize) -> Vec<String> {
    if header.len() < 2 {
        return layout(header, rows, width, None);
    }
    // Whole names when they take at most half the width, else whole words.
    let widest_name = rows
        .iter()
        .filter_map(|r| r.first())
        .map(|c| c.width())
        .chain([header[0].width()])
        .max()
        .unwrap_or(0);
    let name = widest_word(header, rows, 0).max(widest_name.min(width / 2));
    // What the other columns need: the middle ones their widest word, the last its header or
    // a word of up to 12.
    let last = header.len() - 1;
    let others: usize = (1..last)
        .map(|i| widest_word(header, rows, i) + GAP)
        .sum::<usize>()
        + header[last]
            .width()
            .max(widest_word(header, rows, last).min(12));
    if name + GAP + others <= width {
        return layout(header, rows, width, Some(name));
    }
    // Names on lines of their own; the other cells as one table below them, indented.
    let rest_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut cells: Vec<String> = r.iter().skip(1).cloned().collect();
            if let Some(first) = cells.first_mut() {
                first.insert(0, ROW_START);
            }
            cells
        })
        .collect();
    let rest = layout(
        &header[1..],
        &rest_rows,
        width.saturating_sub(INDENT.len()),
        None,
    );
    let mut names = rows
        .iter()
        .map(|r| r.first().map(String::as_str).unwrap_or(""));
    let mut lines = vec![header[0].to_string()];
    for line in &rest {
        if let Some(line) = line.strip_prefix(ROW_START) {
            lines.push(names.next().unwrap_or("").to_string());
            lines.push(format!("{INDENT}{line}").trim_end().to_string());
        } else {
            lines.push(format!("{INDENT}{line}").trim_end().to_string());
        }
    }
    lines
}

/// One comfy-table: columns `GAP` apart, the first at least `name` wide when given.
fn layout(header: &[&str], rows: &[Vec<String>], width: usize, name: Option<usize>) -> Vec<String> {
    let mut t = Table::new();
    t.load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_width(width.min(u16::MAX as usize) as u16)
        .set_header(header.to_vec());
    for row in rows {
        t.add_row(row.clone());
    }
    let last = header.len().saturating_sub(1);
    let words: Vec<usize> = (0..header.len())
        .map(|i| widest_word(header, rows, i))
        .collect();
    for (i, column) in t.column_iter_mut().enumerate() {
        column.set_padding((0, if i == last { 0 } else { GAP as u16 }));
        // The first column at least `name`; the others before the last their widest word.
        let lower = match (i, name) {
            (0, Some(name)) => Some(name),
            (i, _) if i < last => Some(words[i]),
            _ => None,
        };
        if let Some(lower) = lower {
            let lower = (lower + GAP).min(u16::MAX as usize) as u16;
            column.set_constraint(ColumnConstraint::LowerBoundary(Width::Fixed(lower)));
        }
    }
    t.lines().map(|l| l.trim_end().to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::super::snapshots::SNAPSHOT_HEADER;
    use super::*;

    fn row(cells: &[&str]) -> Vec<String> {
        cells.iter().map(|c| c.to_string()).collect()
    }

    /// The display column at which `needle` starts in `line`.
    fn column_of(line: &str, needle: &str) -> usize {
        line[..line.find(needle).unwrap()].width()
    }

    #[test]
    fn short_rows_are_plain_columns_two_spaces_apart() {
        let lines = table_lines(
            &["HOST", "UNIT", "VERSION"],
            &[
                row(&["kb1", "active", "8.14.3"]),
                row(&["kb-two", "-", "-"]),
            ],
            80,
        );
        assert_eq!(
            lines,
            [
                "HOST    UNIT    VERSION",
                "kb1     active  8.14.3",
                "kb-two  -       -",
            ]
        );
    }

    #[test]
    fn only_the_last_column_wraps_a_time_is_never_split() {
        // Every word fits the 18 columns left for the reason (a longer one would be split).
        let why = "started at 01:28:50Z; no host shows a Kibana newer than 8.14.3, installed now or in its records";
        let lines = table_lines(
            &SNAPSHOT_HEADER,
            &[
                row(&[
                    "with-kibana",
                    "SUCCESS",
                    "2026-12-02T01:28:50Z",
                    "8.14.3",
                    "yes",
                    why,
                ]),
                row(&[
                    "data-only",
                    "SUCCESS",
                    "2026-12-02T01:28:49Z",
                    "-",
                    "no",
                    "holds no kibana feature state",
                ]),
            ],
            80,
        );
        assert!(lines.iter().all(|l| l.width() <= 80), "{lines:#?}");
        assert!(
            lines[1].contains("2026-12-02T01:28:50Z  8.14.3  yes"),
            "{lines:#?}"
        );
        let data = lines.iter().find(|l| l.starts_with("data-only")).unwrap();
        assert!(data.contains("2026-12-02T01:28:49Z  -"), "{lines:#?}");
        // The reason wrapped, whole words, in its own column.
        let at = column_of(&lines[0], "WHY");
        let words: Vec<&str> = lines[1..]
            .iter()
            .take_while(|l| !l.starts_with("data-only"))
            .map(|l| l.get(at..).unwrap_or("").trim())
            .collect();
        assert_eq!(words.join(" "), why, "{lines:#?}");
    }

    #[test]
    fn wide_characters_align_by_display_width() {
        let lines = table_lines(
            &["HOST", "STEP", "AGENT"],
            &[
                row(&["ホスト一", "install: ok", "alive"]),
                row(&["kb1", "停止: ok", "alive"]),
            ],
            80,
        );
        // "ホスト一" is 8 columns wide although 4 characters long: STEP and AGENT start at the
        // same display column on every line.
        let step: Vec<usize> = lines
            .iter()
            .skip(1)
            .map(|l| {
                let cell = l.split_whitespace().nth(1).unwrap();
                column_of(l, cell)
            })
            .collect();
        assert_eq!(step, [10, 10], "{lines:#?}");
        let agent: Vec<usize> = lines
            .iter()
            .map(|l| column_of(l, l.split_whitespace().last().unwrap()))
            .collect();
        assert!(agent.iter().all(|c| *c == agent[0]), "{lines:#?}");
    }

    #[test]
    fn a_long_detail_wraps_within_its_column_and_every_line_fits() {
        let detail = "kb2: kibana_yml: server.port: 5611 differs from kibana.status_url's \
                      port 5601; fix: set kibana.status_url = \"http://127.0.0.1:5611/api/status\" \
                      (或者修改 kibana.yml 的 server.port)";
        for width in [80, 60] {
            let lines = table_lines(
                &["CHECK", "RESULT", "DETAIL"],
                &[
                    row(&["hosts ready", "FAIL", detail]),
                    row(&["elasticsearch reachable", "OK", "8.15.0"]),
                ],
                width,
            );
            assert!(
                lines.iter().all(|l| l.width() <= width),
                "{width}: {lines:#?}"
            );
            assert!(lines[1].starts_with("hosts ready") && lines[1].contains("FAIL"));
            // The detail's words all appear, in order, on the row's lines (nothing is cut).
            let row_lines: Vec<&String> = lines[1..]
                .iter()
                .take_while(|l| !l.starts_with("elasticsearch"))
                .collect();
            assert!(row_lines.len() > 1, "{lines:#?}");
            let col = column_of(&lines[0], "DETAIL");
            let joined: Vec<&str> = row_lines
                .iter()
                .flat_map(|l| {
                    let at = l
                        .char_indices()
                        .scan(0, |w, (i, c)| {
                            let here = *w;
                            *w += unicode_width::UnicodeWidthChar::width(c).unwrap_or(0);
                            Some((i, here))
                        })
                        .find(|(_, w)| *w >= col)
                        .map(|(i, _)| i)
                        .unwrap_or(l.len());
                    l[at..].split_whitespace()
                })
                .collect();
            // (A word longer than its column is split, so compare without the spaces.)
            assert_eq!(
                joined.concat(),
                detail.split_whitespace().collect::<String>()
            );
            assert!(
                lines.last().unwrap().starts_with("elasticsearch reachable"),
                "{lines:#?}"
            );
        }
    }

    #[test]
    fn a_name_in_the_first_column_is_never_split() {
        let name = "kibana-rollback-point-8.14.3-20261201t235900";
        let lines = table_lines(
            &SNAPSHOT_HEADER,
            &[
                row(&[
                    &format!("{name} (ROLLBACK POINT)"),
                    "SUCCESS",
                    "2026-12-01 23:59:00",
                    "8.14.3",
                    "yes",
                    "taken 5 s before the upgrade to 8.15.0 began; holds the kibana feature state",
                ]),
                row(&[
                    "nightly",
                    "SUCCESS",
                    "2026-11-30 02:00:00",
                    "8.14.3",
                    "no",
                    "no kibana feature state",
                ]),
            ],
            80,
        );
        eprintln!("{}", lines.join("\n"));
        assert!(lines.iter().all(|l| l.width() <= 80), "{lines:#?}");
        // Too wide to keep the other columns readable beside it: the name on a line of its
        // own, whole, the rest of its row below it, aligned with every other row's.
        assert_eq!(lines[0], "SNAPSHOT");
        assert!(
            lines[1].starts_with("  STATE    STARTED (UTC)"),
            "{lines:#?}"
        );
        assert_eq!(lines[2], format!("{name} (ROLLBACK POINT)"));
        assert!(
            lines[3].starts_with("  SUCCESS  2026-12-01 23:59:00  8.14.3  yes"),
            "{lines:#?}"
        );
        let nightly = lines.iter().position(|l| l == "nightly").unwrap();
        assert!(
            lines[nightly + 1].starts_with("  SUCCESS  2026-11-30 02:00:00  8.14.3  no "),
            "{lines:#?}"
        );
        assert!(lines.iter().all(|l| !l.contains(ROW_START)), "{lines:#?}");
        // Wide enough: one line per row again.
        let wide = table_lines(&["SNAPSHOT", "STATE"], &[row(&[name, "SUCCESS"])], 80);
        assert_eq!(wide[1], format!("{name}  SUCCESS"));
    }
}
