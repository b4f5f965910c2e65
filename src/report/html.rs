//! Self-contained HTML pages: headings, paragraphs, tables, preformatted text and figures
//! embedded as base64 PNG (`data:image/png;base64,...`) with one small stylesheet, no external
//! file, script or font; and Markdown tables of the same [`Table`]s ([`md_table`]).

use base64ct::Encoding;

/// Standard base64 (RFC 4648, with `=` padding) of `bytes`.
pub fn base64(bytes: &[u8]) -> String {
    base64ct::Base64::encode_string(bytes)
}

/// `s` with `& < > " '` escaped for HTML text and attribute values.
pub fn escape(s: &str) -> String {
    let pairs = [
        ('&', "&amp;"),
        ('<', "&lt;"),
        ('>', "&gt;"),
        ('"', "&quot;"),
        ('\'', "&#39;"),
    ];
    pairs
        .iter()
        .fold(s.to_string(), |s, (c, e)| s.replace(*c, e))
}

/// A table: a header row and body rows of text cells (each row as long as the header).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    pub caption: Option<String>,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: impl IntoIterator<Item = impl Into<String>>) -> Table {
        let header = header.into_iter().map(Into::into).collect();
        Table {
            caption: None,
            header,
            rows: vec![],
        }
    }

    pub fn row(&mut self, cells: impl IntoIterator<Item = impl Into<String>>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }
}

/// A Markdown table (`|` in cells escaped).
pub fn md_table(t: &Table) -> String {
    let line = |cells: &[String]| {
        let cells: Vec<String> = cells
            .iter()
            .map(|s| s.replace('|', "\\|").replace('\n', " "))
            .collect();
        format!("| {} |\n", cells.join(" | "))
    };
    let rule = format!("|{}\n", "---|".repeat(t.header.len()));
    line(&t.header) + &rule + &t.rows.iter().map(|r| line(r)).collect::<String>()
}

/// One block of a page.
#[derive(Clone, Debug, PartialEq)]
pub enum Block {
    /// A heading of level 2 to 4.
    Heading(u8, String),
    Paragraph(String),
    Table(Table),
    /// Preformatted text (a recipe, a command).
    Pre(String),
    /// A PNG with its caption.
    Image {
        png: Vec<u8>,
        caption: String,
    },
    /// Figures side by side (wrapping), each with its caption.
    Gallery(Vec<(Vec<u8>, String)>),
    /// A list of links `(href, text)` (relative links to files beside the page).
    Links(Vec<(String, String)>),
    /// A collapsible section holding blocks.
    Details {
        summary: String,
        blocks: Vec<Block>,
    },
}

/// A whole page.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Page {
    pub title: String,
    pub blocks: Vec<Block>,
}

const STYLE: &str = "body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px auto;max-width:1280px;padding:0 16px;color:#222;line-height:1.4}\
h1{font-size:1.6em;border-bottom:2px solid #ddd;padding-bottom:4px}h2{font-size:1.3em;margin-top:1.8em;border-bottom:1px solid #eee}h3{font-size:1.1em}\
table{border-collapse:collapse;margin:8px 0 16px;font-size:0.9em}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right;white-space:nowrap}\
th{background:#f3f3f3}td:first-child,th:first-child,td.l{text-align:left}tr:nth-child(even) td{background:#fafafa}\
caption{caption-side:top;text-align:left;font-weight:600;padding:4px 0}\
pre{background:#f6f6f6;border:1px solid #ddd;padding:8px;overflow-x:auto;font-size:0.85em}\
figure{display:inline-block;margin:6px 12px 12px 0;vertical-align:top}figure img{max-width:100%;border:1px solid #eee}\
figcaption{font-size:0.85em;color:#555}.gallery figure{max-width:48%}details{margin:8px 0}summary{cursor:pointer;font-weight:600}";

/// `<tag>text</tag>` for each of `cells`, the text escaped.
fn cells(tag: &str, cells: &[String]) -> String {
    cells
        .iter()
        .map(|c| format!("<{tag}>{}</{tag}>", escape(c)))
        .collect()
}

fn figure(png: &[u8], caption: &str) -> String {
    let (c, data) = (escape(caption), base64(png));
    format!("<figure><img alt=\"{c}\" src=\"data:image/png;base64,{data}\"><figcaption>{c}</figcaption></figure>")
}

fn render(blocks: &[Block]) -> String {
    let mut out = String::new();
    for b in blocks {
        out += &match b {
            Block::Heading(level, t) => {
                let l = (*level).clamp(2, 4);
                format!("<h{l}>{}</h{l}>", escape(t))
            }
            Block::Paragraph(t) => format!("<p>{}</p>", escape(t)),
            Block::Table(t) => {
                let caption = t
                    .caption
                    .iter()
                    .map(|c| format!("<caption>{}</caption>", escape(c)));
                let rows = t
                    .rows
                    .iter()
                    .map(|r| format!("<tr>{}</tr>\n", cells("td", r)));
                let (caption, rows): (String, String) = (caption.collect(), rows.collect());
                let head = cells("th", &t.header);
                format!(
                    "<table>{caption}<thead><tr>{head}</tr></thead><tbody>\n{rows}</tbody></table>"
                )
            }
            Block::Pre(t) => format!("<pre>{}</pre>", escape(t)),
            Block::Image { png, caption } => figure(png, caption),
            Block::Gallery(figs) => {
                let figs: String = figs.iter().map(|(png, c)| figure(png, c)).collect();
                format!("<div class=\"gallery\">{figs}</div>")
            }
            Block::Links(links) => {
                let li = |(href, text): &(String, String)| {
                    format!("<li><a href=\"{}\">{}</a></li>", escape(href), escape(text))
                };
                format!("<ul>{}</ul>", links.iter().map(li).collect::<String>())
            }
            Block::Details { summary, blocks } => {
                let inner = render(blocks);
                format!(
                    "<details><summary>{}</summary>\n{inner}</details>",
                    escape(summary)
                )
            }
        };
        out.push('\n');
    }
    out
}

impl Page {
    /// The page as one HTML document.
    pub fn to_html(&self) -> String {
        let t = escape(&self.title);
        let head = format!(
            "<head><meta charset=\"utf-8\"><title>{t}</title><style>{STYLE}</style></head>"
        );
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\">{head}<body>\n<h1>{t}</h1>\n{}</body></html>\n",
            render(&self.blocks)
        )
    }
}
