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

/// Elements a narrative may contain: the reference validator's list (XhtmlValidator
/// HTML_ELEMENTS), HTML 4.0's basic formatting elements less `ins`/`del` (chapter 9 section 4,
/// which R4 excludes) and the font styles `s`, `strike` and `u`, which the reference refuses too.
const ALLOWED: &[&str] = &[
    "a",
    "abbr",
    "acronym",
    "address",
    "area",
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
    "kbd",
    "li",
    "map",
    "ol",
    "p",
    "pre",
    "q",
    "samp",
    "small",
    "span",
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
    "ul",
    "var",
];

/// Attributes allowed on any element (the reference's HTML_ATTRIBUTES); `xmlns...` always.
const ANY_ATTRIBUTES: &[&str] = &[
    "title",
    "style",
    "class",
    "id",
    "lang",
    "xml:lang",
    "dir",
    "accesskey",
    "tabindex",
    "span",
    "width",
    "align",
    "valign",
    "char",
    "charoff",
    "abbr",
    "axis",
    "headers",
    "scope",
    "rowspan",
    "colspan",
    "xml:space",
];

/// Attributes allowed on one element (the reference's HTML_COMBO_LIST), as `element.attribute`.
const ELEMENT_ATTRIBUTES: &[&str] = &[
    "a.href",
    "a.name",
    "a.charset",
    "a.type",
    "a.hreflang",
    "a.rel",
    "a.rev",
    "a.shape",
    "a.coords",
    "img.src",
    "img.border",
    "img.alt",
    "img.longdesc",
    "img.height",
    "img.width",
    "img.usemap",
    "img.ismap",
    "div.xmlns",
    "blockquote.cite",
    "q.cite",
    "map.name",
    "area.shape",
    "area.coords",
    "area.href",
    "area.nohref",
    "area.alt",
    "table.summary",
    "table.width",
    "table.border",
    "table.frame",
    "table.rules",
    "table.cellspacing",
    "table.cellpadding",
    "pre.space",
    "td.nowrap",
];

/// Block elements a paragraph may not contain.
const BLOCKS: &[&str] = &["div", "blockquote", "table", "ol", "ul", "p"];

/// What is wrong with an `a href` or `img src` value, as the reference's UrlUtil checks it:
/// not empty; a `data:` URL has one comma and, when `;base64`, base64 data; any other URL uses
/// only letters, digits and `;?:@&=+$.,/%-_~#[]!'()*|`.
fn url_fault(value: &str) -> Option<&'static str> {
    if value.is_empty() {
        return Some("a hyperlink or image source is empty");
    }
    if let Some(data) = value.strip_prefix("data:") {
        let parts: Vec<&str> = data.split(',').collect();
        if parts.len() != 2 {
            return Some("a data: URL must have exactly one comma, between its type and its data");
        }
        if parts[0].ends_with(";base64") {
            let n = parts[1].chars().filter(|c| c.is_alphanumeric() || matches!(c, '/' | '=' | '+')).count();
            if n % 4 != 0 {
                return Some("a data: URL's base64 data is not valid base64");
            }
        }
        return None;
    }
    let ok = value.chars().all(|c| c.is_alphanumeric() || ";?:@&=+$.,/%-_~#[]!'()*|".contains(c));
    (!ok).then_some("a hyperlink or image source has characters a URL may not contain (such as spaces, quotes or <>)")
}

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
        entities(&rest[..open])?;
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
            let local = end.rsplit(':').next().unwrap_or(end).to_string();
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
        let local = name.rsplit(':').next().unwrap_or(name).to_string();
        if !ALLOWED.contains(&local.as_str()) {
            return Err(Fault::Markup(format!(
                "{} is not allowed in a narrative",
                describe(&local.to_ascii_lowercase())
            )));
        }
        if BLOCKS.contains(&local.as_str()) && open_elements.iter().any(|e| e == "p") {
            return Err(Fault::Markup(format!("the block element <{local}> is not allowed inside a paragraph <p>")));
        }
        has_image |= local == "img";
        if !self_closing {
            open_elements.push(local.clone());
        } else if open_elements.is_empty() {
            closed_root = true;
        }
        let attrs = &tag[name.len()..];
        entities(attrs)?;
        for attr in attribute_names(attrs) {
            if attr.len() > 2 && attr[..2].eq_ignore_ascii_case("on") {
                return Err(Fault::Markup(
                    "event-handler attributes (on...) are not allowed in a narrative".to_string(),
                ));
            }
            let allowed = attr.starts_with("xmlns")
                || ANY_ATTRIBUTES.contains(&attr)
                || ELEMENT_ATTRIBUTES.iter().any(|ea| ea.split_once('.') == Some((local.as_str(), attr)));
            if !allowed {
                // Named only when it is an XHTML attribute allowed elsewhere: anything else in
                // a tag may be narrative text (`<p Jane Smith>`), which is never repeated.
                let known = ELEMENT_ATTRIBUTES.iter().any(|ea| ea.split_once('.').is_some_and(|(_, a)| a == attr));
                let what = if known { format!("the attribute {attr}") } else { "an attribute".to_string() };
                return Err(Fault::Markup(format!("{what} is not allowed on <{local}> in a narrative")));
            }
        }
        for (attr, value) in attributes(attrs) {
            if ((local == "a" && attr == "href") || (local == "img" && attr == "src"))
                && let Some(why) = url_fault(value)
            {
                return Err(Fault::Markup(why.to_string()));
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
    entities(rest)?;
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

/// The references in text or attribute values (`&...;`), as the reference's XHTML parser reads
/// them in XML mode (parseLiteral): a character reference (`&#160;`, `&#xA0;`) or one of XML's
/// five entities; HTML's (`&nbsp;`, `&reg;`) are not XML, nor is a bare `&`
/// (XHTML_XHTML_Entity_Illegal). The fault never repeats the text.
fn entities(s: &str) -> Result<(), Fault> {
    for (i, _) in s.match_indices('&') {
        let after = &s[i + 1..];
        let name = after.split([';', '&', '\'', '"', '>', '<']).next().unwrap_or("");
        let numeric = name.strip_prefix('#').is_some_and(|n| {
            n.strip_prefix('x').map_or(!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()), |h| {
                !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit())
            })
        });
        if !after[name.len()..].starts_with(';') || !(numeric || matches!(name, "quot" | "amp" | "apos" | "lt" | "gt"))
        {
            return Err(Fault::Malformed(
                "an entity XML does not define, or a bare &: use &amp;, &lt;, &gt;, &quot;, &apos; or a numeric character reference".into(),
            ));
        }
    }
    Ok(())
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

    /// XML's entities and character references only, in text and attribute values, as the
    /// reference parses narratives (XHTML_XHTML_Entity_Illegal); HTML's named ones are not XML.
    #[test]
    fn only_xml_entities_and_character_references() {
        let text = |t: &str| check(&format!("<div {NS}><p>{t}</p></div>"));
        for ok in ["a &amp; b", "&lt;&gt;&quot;&apos;", "&#160;&#xA0;&#xa0;", "no entity"] {
            assert_eq!(text(ok), Ok(()), "{ok}");
        }
        for bad in ["&reg;", "&nbsp;", "Smith & Jones", "&amp", "&#;", "&#xZ1;", "&;"] {
            assert!(matches!(text(bad), Err(Fault::Malformed(_))), "{bad}");
        }
        let link = |href: &str| check(&format!("<div {NS}><a href=\"{href}\">x</a></div>"));
        assert_eq!(link("http://example.org/a?b=c&amp;d=e"), Ok(()));
        assert!(matches!(link("http://example.org/a?b=c&d=e"), Err(Fault::Malformed(_))));
        assert!(matches!(check(&format!("<div {NS}>x</div>&copy;")), Err(Fault::Malformed(_))));
    }

    #[test]
    fn basic_formatting_passes() {
        let div = format!("<div {NS}><p>Referral <b>sent</b></p><!-- note --><img src=\"#a\" alt=\"x\"/></div>");
        assert_eq!(check(&div), Ok(()));
        assert_eq!(check(&format!("<div {NS}>&#160;</div>")), Ok(()));
    }

    /// The reference validator's element, attribute and hyperlink rules (XhtmlValidator).
    #[test]
    fn elements_attributes_and_links_follow_the_reference_validator() {
        let ok = |inner: &str| check(&format!("<div {NS}>{inner}</div>"));
        for good in [
            "<p class=\"x\" style=\"color:red\" id=\"a1\" title=\"t\">a</p>",
            "<a href=\"#a1\">x</a><a name=\"n\">y</a>",
            "<a href=\"http://example.org/a?b=c&amp;d=(e)\">link</a>",
            "<img src=\"data:image/png;base64,iVBORw0KGgo=\" alt=\"x\"/>",
            "<table border=\"1\" cellpadding=\"2\"><tr><td colspan=\"2\" nowrap=\"nowrap\">x</td></tr></table>",
            "<map name=\"m\"><area shape=\"rect\" coords=\"0,0,1,1\" href=\"#a\" alt=\"a\"/></map>x",
            "<pre xml:space=\"preserve\">x</pre>",
            "<p>a <b>b</b> <span>c</span></p>",
        ] {
            assert_eq!(ok(good), Ok(()), "{good}");
        }
        for bad in [
            "<u>underlined</u>",
            "<s>struck</s>",
            "<ins>inserted</ins>",
            "<p align=\"left\" foo=\"1\">x</p>",
            "<span href=\"#a\">x</span>",
            "<img src=\"a b.png\"/>",
            "<a href=\"\">x</a>",
            "<img src=\"data:image/png;base64,abc\"/>",
            "<img src=\"data:a,b,c\"/>",
            "<p>para <div>block</div></p>",
            "<p><ul><li>x</li></ul></p>",
        ] {
            assert!(matches!(ok(bad), Err(Fault::Markup(_))), "{bad}: {:?}", ok(bad));
        }
    }

    #[test]
    fn refused_attributes_are_named_only_when_they_are_xhtml_attribute_names() {
        let fault = |inner: &str| format!("{:?}", check(&format!("<div {NS}>{inner}</div>")));
        let text = fault("<p Jane Smith>x</p>");
        assert!(text.contains("an attribute") && !text.contains("Jane"), "{text}");
        assert!(fault("<p href=\"#a\">x</p>").contains("the attribute href"));
    }

    #[test]
    fn nesting_must_be_well_formed() {
        let ok = |inner: &str| check(&format!("<div {NS}>{inner}</div>"));
        assert_eq!(ok("<p>a<br/>b<br />c</p><table><tr><td>x</td></tr></table>"), Ok(()));
        assert!(ok("<P>upper case</P>").is_err(), "XHTML names are lower case, as in the reference");
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
