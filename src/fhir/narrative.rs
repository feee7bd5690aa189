//! The narrative rules of R4 (`Narrative.div`): `txt-1`, only the basic XHTML formatting
//! elements, no scripts, forms or event handlers, in a `div` in the XHTML namespace; `txt-2`,
//! some non-whitespace content (text or an image).
//!
//! A light tag scanner, not a full XML parser: it finds elements and attributes, which is what
//! the rules are about, and checks the nesting (every start tag closed by its own end tag, one
//! root `div`), as the reference validator's XHTML parser does in XML mode.

/// Which narrative rule a `div` breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `txt-1`, with a description that names only markup (never narrative text).
    Markup(String),
    /// `txt-2`: no text and no image.
    NoContent,
    /// Not well-formed: an end tag that closes another element, an element left open, or
    /// something after the root `div`.
    Malformed(String),
}

/// Elements the R4 narrative may contain (HTML 4.0 chapters 7–11 and 15, `a`, `img`).
const ALLOWED: &[&str] = &[
    "a",
    "abbr",
    "acronym",
    "address",
    "b",
    "bdo",
    "big",
    "blockquote",
    "br",
    "caption",
    "cite",
    "code",
    "col",
    "colgroup",
    "dd",
    "del",
    "dfn",
    "div",
    "dl",
    "dt",
    "em",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "i",
    "img",
    "ins",
    "kbd",
    "li",
    "ol",
    "p",
    "pre",
    "q",
    "s",
    "samp",
    "small",
    "span",
    "strike",
    "strong",
    "sub",
    "sup",
    "table",
    "tbody",
    "td",
    "tfoot",
    "th",
    "thead",
    "tr",
    "tt",
    "u",
    "ul",
    "var",
];

/// HTML elements a narrative may not use, named in diagnostics; any other tag is described
/// without its name (a malformed tag could carry narrative text, which is patient data).
const REFUSED: &[&str] = &[
    "script", "style", "form", "input", "button", "select", "textarea", "iframe", "frame", "frameset", "object",
    "embed", "applet", "link", "meta", "base", "head", "body", "html", "title", "noscript", "svg", "math",
];

fn describe(local: &str) -> String {
    match REFUSED.iter().find(|r| **r == local) {
        Some(r) => format!("the element <{r}>"),
        None => "an element that is not basic HTML formatting".to_string(),
    }
}

/// Check a `Narrative.div`.
pub fn check(div: &str) -> Result<(), Fault> {
    let trimmed = div.trim_start();
    if !trimmed.starts_with("<div") || !trimmed[4..].starts_with([' ', '>', '\t', '\n', '\r', '/']) {
        return Err(Fault::Markup("the narrative must be a single XHTML <div> element".into()));
    }
    let mut has_text = false;
    let mut has_image = false;
    let mut first = true;
    let mut rest = trimmed;
    // Open elements (local names); the root closes last.
    let mut open_elements: Vec<String> = Vec::new();
    let mut closed_root = false;
    while let Some(open) = rest.find('<') {
        has_text |= text_content(&rest[..open]);
        let after = &rest[open + 1..];
        if let Some(comment) = after.strip_prefix("!--") {
            rest = comment.find("-->").map(|e| &comment[e + 3..]).unwrap_or("");
            continue;
        }
        if closed_root {
            return Err(Fault::Malformed("there is content after the root <div>".into()));
        }
        if after.starts_with('!') || after.starts_with('?') {
            return Err(Fault::Markup("processing instructions and declarations are not allowed".into()));
        }
        let close = after.find('>').ok_or_else(|| Fault::Markup("an element is not closed".into()))?;
        let tag = &after[..close];
        rest = &after[close + 1..];
        if let Some(end) = tag.strip_prefix('/') {
            let end = end.trim();
            let local = end.rsplit(':').next().unwrap_or(end).to_ascii_lowercase();
            match open_elements.pop() {
                Some(top) if top == local => closed_root = open_elements.is_empty(),
                _ => return Err(Fault::Malformed("an end tag does not match the element it closes".into())),
            }
            continue;
        }
        let self_closing = tag.ends_with('/');
        let tag = tag.trim_end_matches('/');
        let mut parts = tag.split_ascii_whitespace();
        let name = parts.next().unwrap_or("");
        let local = name.rsplit(':').next().unwrap_or(name).to_ascii_lowercase();
        if !ALLOWED.contains(&local.as_str()) {
            return Err(Fault::Markup(format!("{} is not allowed in a narrative", describe(&local))));
        }
        has_image |= local == "img";
        if !self_closing {
            open_elements.push(local.clone());
        } else if open_elements.is_empty() {
            closed_root = true;
        }
        let attrs = &tag[name.len()..];
        for attr in attribute_names(attrs) {
            if attr.len() > 2 && attr[..2].eq_ignore_ascii_case("on") {
                return Err(Fault::Markup(
                    "event-handler attributes (on...) are not allowed in a narrative".to_string(),
                ));
            }
        }
        if first {
            first = false;
            if !attrs.contains("\"http://www.w3.org/1999/xhtml\"") && !attrs.contains("'http://www.w3.org/1999/xhtml'")
            {
                return Err(Fault::Markup("the narrative <div> must be in the XHTML namespace".into()));
            }
        }
    }
    if !open_elements.is_empty() {
        return Err(Fault::Malformed("an element is not closed".into()));
    }
    if text_content(rest) {
        return Err(Fault::Malformed("there is text after the root <div>".into()));
    }
    if has_text || has_image { Ok(()) } else { Err(Fault::NoContent) }
}

/// The targets of the div's internal hyperlinks (`<a href="#x">` gives `x`) and its anchors
/// (`id` and `name` attributes).
pub fn links_and_anchors(div: &str) -> (Vec<&str>, Vec<&str>) {
    let (mut links, mut anchors) = (Vec::new(), Vec::new());
    let mut rest = div;
    while let Some(open) = rest.find('<') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('>') else { break };
        let tag = &after[..close];
        rest = &after[close + 1..];
        if tag.starts_with(['/', '!', '?']) {
            continue;
        }
        let name = tag.split_ascii_whitespace().next().unwrap_or("");
        for (attr, value) in attributes(&tag[name.len()..]) {
            match attr {
                "href" if name.eq_ignore_ascii_case("a") => {
                    if let Some(target) = value.strip_prefix('#').filter(|t| !t.is_empty()) {
                        links.push(target);
                    }
                }
                "id" | "name" => anchors.push(value),
                _ => {}
            }
        }
    }
    (links, anchors)
}

/// Attribute names and (quoted) values of a start tag's attribute text.
fn attributes(attrs: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = attrs.trim_end_matches('/');
    while let Some(eq) = rest.find('=') {
        let name = rest[..eq].trim();
        let name = name.rsplit(char::is_whitespace).next().unwrap_or(name);
        let after = rest[eq + 1..].trim_start();
        let (value, next) = match after.chars().next() {
            Some(q @ ('"' | '\'')) => match after[1..].find(q) {
                Some(end) => (&after[1..=end], &after[end + 2..]),
                None => (&after[1..], ""),
            },
            _ => {
                let end = after.find(char::is_whitespace).unwrap_or(after.len());
                (&after[..end], &after[end..])
            }
        };
        out.push((name, value));
        rest = next;
    }
    out
}

fn text_content(s: &str) -> bool {
    s.split('&').enumerate().any(|(i, part)| {
        // An entity (`&nbsp;`) counts as content.
        let text = if i == 0 { part } else { return !part.is_empty() };
        text.chars().any(|c| !c.is_whitespace())
    })
}

/// Attribute names of a start tag's attribute text (skipping quoted values).
fn attribute_names(attrs: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let b = attrs.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        names.push(&attrs[start..i]);
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < b.len() && b[i] == b'=' {
            i += 1;
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
                let q = b[i];
                i += 1;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
                i += 1;
            } else {
                while i < b.len() && !b[i].is_ascii_whitespace() {
                    i += 1;
                }
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: &str = "xmlns=\"http://www.w3.org/1999/xhtml\"";

    #[test]
    fn basic_formatting_passes() {
        let div = format!("<div {NS}><p>Referral <b>sent</b></p><!-- note --><img src=\"#a\" alt=\"x\"/></div>");
        assert_eq!(check(&div), Ok(()));
        assert_eq!(check(&format!("<div {NS}>&#160;</div>")), Ok(()));
    }

    #[test]
    fn nesting_must_be_well_formed() {
        let ok = |inner: &str| check(&format!("<div {NS}>{inner}</div>"));
        assert_eq!(ok("<p>a<br/>b<br />c</p><table><tr><td>x</td></tr></table>"), Ok(()));
        assert_eq!(ok("<P>mixed case</p>"), Ok(()), "HTML names compare without case");
        assert!(matches!(ok("<p>unclosed"), Err(Fault::Malformed(_))));
        assert!(matches!(ok("<p><b>crossed</p></b>"), Err(Fault::Malformed(_))));
        assert!(matches!(ok("</p>stray end"), Err(Fault::Malformed(_))));
        assert!(matches!(check(&format!("<div {NS}>a</div><p>b</p>")), Err(Fault::Malformed(_))));
        assert!(matches!(check(&format!("<div {NS}>a</div>trailing")), Err(Fault::Malformed(_))));
        assert!(matches!(check(&format!("<div {NS}>a")), Err(Fault::Malformed(_))));
        assert_eq!(check(&format!("<div {NS}>a</div>\n  ")), Ok(()), "whitespace after the root is fine");
    }

    #[test]
    fn scripts_handlers_namespace_and_emptiness_fail() {
        assert!(matches!(check(&format!("<div {NS}><script>x()</script></div>")), Err(Fault::Markup(_))));
        assert!(matches!(check(&format!("<div {NS}><p onclick=\"x()\">a</p></div>")), Err(Fault::Markup(_))));
        assert!(matches!(check("<div><p>a</p></div>"), Err(Fault::Markup(_))));
        assert!(matches!(check(&format!("<p {NS}>a</p>")), Err(Fault::Markup(_))));
        assert_eq!(check(&format!("<div {NS}>  <p> </p></div>")), Err(Fault::NoContent));
    }
}
