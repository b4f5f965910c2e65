//! Self-contained HTML pages: sections of headings, paragraphs, tables, preformatted text and
//! figures embedded as base64 PNG (`data:image/png;base64,...`), with one small stylesheet; no
//! external file, script or font. Markdown tables for the same content ([`md_table`]).

use anyhow::{ensure, Context, Result};

/// Standard base64 (RFC 4648, with `=` padding) of `bytes`.
pub fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `s` with `& < > " '` escaped for HTML text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
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
        Table {
            caption: None,
            header: header.into_iter().map(Into::into).collect(),
            rows: vec![],
        }
    }

    pub fn row(&mut self, cells: impl IntoIterator<Item = impl Into<String>>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }
}

/// A Markdown table (`|` in cells escaped).
pub fn md_table(t: &Table) -> String {
    let cell = |s: &String| s.replace('|', "\\|").replace('\n', " ");
    let mut s = String::new();
    let line = |cells: &[String]| {
        format!(
            "| {} |\n",
            cells.iter().map(cell).collect::<Vec<_>>().join(" | ")
        )
    };
    s.push_str(&line(&t.header));
    s.push_str(&format!("|{}\n", "---|".repeat(t.header.len())));
    for r in &t.rows {
        s.push_str(&line(r));
    }
    s
}

/// One block of a page.
#[derive(Clone, Debug, PartialEq)]
pub enum Block {
    /// A heading of level 2 or 3.
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

fn render_table(t: &Table, out: &mut String) {
    out.push_str("<table>");
    if let Some(c) = &t.caption {
        out.push_str(&format!("<caption>{}</caption>", escape(c)));
    }
    out.push_str("<thead><tr>");
    for h in &t.header {
        out.push_str(&format!("<th>{}</th>", escape(h)));
    }
    out.push_str("</tr></thead><tbody>\n");
    for r in &t.rows {
        out.push_str("<tr>");
        for c in r {
            out.push_str(&format!("<td>{}</td>", escape(c)));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table>\n");
}

fn figure(png: &[u8], caption: &str) -> String {
    format!(
        "<figure><img alt=\"{}\" src=\"data:image/png;base64,{}\"><figcaption>{}</figcaption></figure>",
        escape(caption),
        base64(png),
        escape(caption)
    )
}

fn render_blocks(blocks: &[Block], out: &mut String) {
    for b in blocks {
        match b {
            Block::Heading(level, t) => {
                let l = (*level).clamp(2, 4);
                out.push_str(&format!("<h{l}>{}</h{l}>\n", escape(t)));
            }
            Block::Paragraph(t) => out.push_str(&format!("<p>{}</p>\n", escape(t))),
            Block::Table(t) => render_table(t, out),
            Block::Pre(t) => out.push_str(&format!("<pre>{}</pre>\n", escape(t))),
            Block::Image { png, caption } => {
                out.push_str(&figure(png, caption));
                out.push('\n');
            }
            Block::Gallery(figs) => {
                out.push_str("<div class=\"gallery\">");
                for (png, caption) in figs {
                    out.push_str(&figure(png, caption));
                }
                out.push_str("</div>\n");
            }
            Block::Links(links) => {
                out.push_str("<ul>");
                for (href, text) in links {
                    out.push_str(&format!(
                        "<li><a href=\"{}\">{}</a></li>",
                        escape(href),
                        escape(text)
                    ));
                }
                out.push_str("</ul>\n");
            }
            Block::Details { summary, blocks } => {
                out.push_str(&format!(
                    "<details><summary>{}</summary>\n",
                    escape(summary)
                ));
                render_blocks(blocks, out);
                out.push_str("</details>\n");
            }
        }
    }
}

impl Page {
    /// The page as one HTML document.
    pub fn to_html(&self) -> String {
        let mut out = format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>\n<h1>{}</h1>\n",
            escape(&self.title),
            escape(&self.title)
        );
        render_blocks(&self.blocks, &mut out);
        out.push_str("</body></html>\n");
        out
    }
}

/// PNGs of one width stacked top to bottom into one PNG (8-bit RGB, as the plots write them).
pub fn stack_png(images: &[Vec<u8>]) -> Result<Vec<u8>> {
    ensure!(!images.is_empty(), "no image to stack");
    let mut width = None;
    let (mut rgb, mut height) = (Vec::new(), 0u32);
    for (i, img) in images.iter().enumerate() {
        let mut reader = png::Decoder::new(std::io::Cursor::new(img.as_slice()))
            .read_info()
            .with_context(|| format!("image {i} is not a PNG"))?;
        let mut buf = vec![0; reader.output_buffer_size().context("PNG too large")?];
        let info = reader
            .next_frame(&mut buf)
            .with_context(|| format!("image {i}: bad PNG"))?;
        ensure!(
            info.color_type == png::ColorType::Rgb && info.bit_depth == png::BitDepth::Eight,
            "image {i}: expected 8-bit RGB"
        );
        ensure!(
            *width.get_or_insert(info.width) == info.width,
            "image {i}: width {} differs from the first image's",
            info.width
        );
        rgb.extend_from_slice(&buf[..info.buffer_size()]);
        height += info.height;
    }
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, width.unwrap_or(0), height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().context("encoding PNG")?;
    w.write_image_data(&rgb).context("encoding PNG")?;
    w.finish().context("encoding PNG")?;
    Ok(out)
}
