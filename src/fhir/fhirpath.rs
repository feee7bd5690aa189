//! A FHIRPath engine for the invariants of the FHIR definitions (`constraint.expression`).
//!
//! Expressions are parsed once, when the validation index is built, into an [`Expr`] tree whose
//! regexes are already compiled; evaluation walks the instance's `serde_json::Value` by
//! reference and allocates only the small collections it returns. Peers that evaluate over
//! owned values cost more than a whole structural validation per expression, which the
//! ingest goal (BENCHMARKS.md) cannot afford.
//!
//! It implements the part of FHIRPath 2.0 (N1, the version R4 uses) that the R4 invariants and
//! common profile constraints need: paths with choice elements (`value` finds `valueQuantity`)
//! and primitive extensions (`_birthDate`), indexers, literals (string, integer, decimal,
//! boolean, date/time, `{}`), `$this`, `$index`, `%resource`, `%rootResource`, `%context`, every
//! operator except quantities, three-valued logic, date/time comparison with precision and time
//! zones, and the functions listed in [`Func`]. A function outside that list (`resolve()`,
//! `memberOf()`, `conformsTo()`, ...) makes [`parse`] fail with [`FhirPathError::Unsupported`]:
//! such an invariant is reported as not evaluated, never as failed.
//!
//! Type tests (`is`, `as`, `ofType`) know the type of resources, of choice elements (from the
//! property name) and the JSON kind of other primitives; they do not consult the definitions.

use std::borrow::Cow;
use std::cmp::Ordering;

use regex::Regex;
use rustc_hash::FxHashSet;
use serde_json::Value;
use smallvec::{SmallVec, smallvec};

/// Why an expression cannot be parsed or evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FhirPathError {
    #[error("syntax error at offset {0}: {1}")]
    Syntax(usize, String),
    #[error("not supported: {0}")]
    Unsupported(String),
    #[error("evaluation error: {0}")]
    Eval(String),
}

type Result<T> = std::result::Result<T, FhirPathError>;

/// The functions the engine knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    Empty,
    Exists,
    Not,
    Where,
    Select,
    All,
    Count,
    First,
    Last,
    Tail,
    Skip,
    Take,
    Single,
    IsDistinct,
    Distinct,
    StartsWith,
    EndsWith,
    Contains,
    Matches,
    ReplaceMatches,
    Replace,
    Length,
    Substring,
    Upper,
    Lower,
    IndexOf,
    ToInteger,
    ToString,
    ToDecimal,
    ConvertsToInteger,
    HasValue,
    Trace,
    Children,
    Descendants,
    Combine,
    Union,
    Intersect,
    Exclude,
    SubsetOf,
    SupersetOf,
    Iif,
    HtmlChecks,
    Extension,
    OfType,
    As,
    Is,
    AllTrue,
    AnyTrue,
    AllFalse,
    AnyFalse,
    Trim,
    ToChars,
    Split,
    Join,
    MatchesFull,
    ToBoolean,
    ConvertsToBoolean,
    ConvertsToString,
    ConvertsToDecimal,
    Abs,
    Ceiling,
    Floor,
    Round,
    Truncate,
    Sqrt,
    Exp,
    Ln,
    Log,
    Power,
    Repeat,
}

impl Func {
    fn from_name(name: &str) -> Option<(Func, usize, usize)> {
        use Func::*;
        // (function, minimum arguments, maximum arguments)
        Some(match name {
            "empty" => (Empty, 0, 0),
            "exists" => (Exists, 0, 1),
            "not" => (Not, 0, 0),
            "where" => (Where, 1, 1),
            "select" => (Select, 1, 1),
            "all" => (All, 1, 1),
            "count" => (Count, 0, 0),
            "first" => (First, 0, 0),
            "last" => (Last, 0, 0),
            "tail" => (Tail, 0, 0),
            "skip" => (Skip, 1, 1),
            "take" => (Take, 1, 1),
            "single" => (Single, 0, 0),
            "isDistinct" => (IsDistinct, 0, 0),
            "distinct" => (Distinct, 0, 0),
            "startsWith" => (StartsWith, 1, 1),
            "endsWith" => (EndsWith, 1, 1),
            "contains" => (Contains, 1, 1),
            "matches" => (Matches, 1, 1),
            "replaceMatches" => (ReplaceMatches, 2, 2),
            "replace" => (Replace, 2, 2),
            "length" => (Length, 0, 0),
            "substring" => (Substring, 1, 2),
            "upper" => (Upper, 0, 0),
            "lower" => (Lower, 0, 0),
            "indexOf" => (IndexOf, 1, 1),
            "toInteger" => (ToInteger, 0, 0),
            "toString" => (ToString, 0, 0),
            "toDecimal" => (ToDecimal, 0, 0),
            "convertsToInteger" => (ConvertsToInteger, 0, 0),
            "hasValue" => (HasValue, 0, 0),
            "trace" => (Trace, 1, 2),
            "children" => (Children, 0, 0),
            "descendants" => (Descendants, 0, 0),
            "combine" => (Combine, 1, 1),
            "union" => (Union, 1, 1),
            "intersect" => (Intersect, 1, 1),
            "exclude" => (Exclude, 1, 1),
            "subsetOf" => (SubsetOf, 1, 1),
            "supersetOf" => (SupersetOf, 1, 1),
            "iif" => (Iif, 2, 3),
            "htmlChecks" => (HtmlChecks, 0, 0),
            "extension" => (Extension, 1, 1),
            "ofType" => (OfType, 1, 1),
            "as" => (As, 1, 1),
            "is" => (Is, 1, 1),
            "allTrue" => (AllTrue, 0, 0),
            "anyTrue" => (AnyTrue, 0, 0),
            "allFalse" => (AllFalse, 0, 0),
            "anyFalse" => (AnyFalse, 0, 0),
            "trim" => (Trim, 0, 0),
            "toChars" => (ToChars, 0, 0),
            "split" => (Split, 1, 1),
            "join" => (Join, 0, 1),
            "matchesFull" => (MatchesFull, 1, 1),
            "toBoolean" => (ToBoolean, 0, 0),
            "convertsToBoolean" => (ConvertsToBoolean, 0, 0),
            "convertsToString" => (ConvertsToString, 0, 0),
            "convertsToDecimal" => (ConvertsToDecimal, 0, 0),
            "abs" => (Abs, 0, 0),
            "ceiling" => (Ceiling, 0, 0),
            "floor" => (Floor, 0, 0),
            "round" => (Round, 0, 1),
            "truncate" => (Truncate, 0, 0),
            "sqrt" => (Sqrt, 0, 0),
            "exp" => (Exp, 0, 0),
            "ln" => (Ln, 0, 0),
            "log" => (Log, 1, 1),
            "power" => (Power, 1, 1),
            "repeat" => (Repeat, 1, 1),
            _ => return None,
        })
    }

    /// Functions whose arguments are evaluated per input item, with `$this` bound to it.
    fn iterates(self) -> bool {
        matches!(self, Func::Where | Func::Select | Func::All | Func::Exists | Func::Repeat)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Mul,
    Div,
    IntDiv,
    Mod,
    Add,
    Sub,
    Concat,
    Union,
    Lt,
    Gt,
    Le,
    Ge,
    Eq,
    Ne,
    Equiv,
    NotEquiv,
    In,
    Contains,
    And,
    Or,
    Xor,
    Implies,
}

impl Op {
    fn precedence(self) -> u8 {
        use Op::*;
        match self {
            Implies => 1,
            Or | Xor => 2,
            And => 3,
            In | Contains => 4,
            Eq | Ne | Equiv | NotEquiv => 5,
            Lt | Gt | Le | Ge => 6,
            Union => 7,
            Add | Sub | Concat => 9,
            Mul | Div | IntDiv | Mod => 10,
        }
    }
}

/// Precedence of `is` / `as` (between `|` and `+`).
const TYPE_OP_PRECEDENCE: u8 = 8;

/// A parsed expression.
#[derive(Debug)]
pub enum Expr {
    Empty,
    Bool(bool),
    Str(String),
    Int(i64),
    Dec(f64),
    /// `@2014-01-01`, `@2014-01-01T10:00:00Z`, `@T10:00` (kept without the `@`).
    Temporal(String),
    This,
    Index,
    /// `%resource`, `%rootResource`, `%context`, and string constants such as `%ucum`.
    Var(String),
    /// A path step; `None` applies it to the input of the expression.
    Member(Option<Box<Expr>>, String),
    Call {
        target: Option<Box<Expr>>,
        func: Func,
        args: Vec<Expr>,
        /// The compiled regex of `matches` / `replaceMatches` with a literal pattern.
        regex: Option<Regex>,
        /// The type argument of `ofType` / `as` / `is`.
        type_name: Option<String>,
    },
    Indexer(Box<Expr>, Box<Expr>),
    Neg(Box<Expr>),
    Binary(Op, Box<Expr>, Box<Expr>),
    Is(Box<Expr>, String),
    As(Box<Expr>, String),
}

// ---------------------------------------------------------------------------------------------
// Lexer

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// A backtick-delimited identifier: never a keyword.
    Quoted(String),
    Str(String),
    Int(i64),
    Dec(f64),
    Temporal(String),
    Var(String),
    Dollar(String),
    Sym(&'static str),
    End,
}

fn lex(src: &str) -> Result<Vec<(usize, Tok)>> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let syntax = |at: usize, m: &str| FhirPathError::Syntax(at, m.to_string());
    while i < b.len() {
        let c = b[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let end = src[i + 2..].find("*/").ok_or_else(|| syntax(i, "unterminated comment"))?;
                i += end + 4;
            }
            b'\'' | b'`' => {
                let (s, next) = string_literal(src, i)?;
                out.push((start, if c == b'\'' { Tok::Str(s) } else { Tok::Quoted(s) }));
                i = next;
            }
            b'@' => {
                i += 1;
                // A '.' belongs to the literal only before a digit (`@T10:00:00.5`, not `@2015.is()`).
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric()
                        || matches!(b[i], b'-' | b':' | b'+')
                        || (b[i] == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)))
                {
                    i += 1;
                }
                out.push((start, Tok::Temporal(src[start + 1..i].to_string())));
            }
            b'%' => {
                i += 1;
                if i < b.len() && (b[i] == b'\'' || b[i] == b'`') {
                    let (s, next) = string_literal(src, i)?;
                    out.push((start, Tok::Var(s)));
                    i = next;
                } else {
                    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'-') {
                        i += 1;
                    }
                    out.push((start, Tok::Var(src[start + 1..i].to_string())));
                }
            }
            b'$' => {
                i += 1;
                while i < b.len() && b[i].is_ascii_alphabetic() {
                    i += 1;
                }
                out.push((start, Tok::Dollar(src[start + 1..i].to_string())));
            }
            b'0'..=b'9' => {
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
                    i += 1;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                    let v = src[start..i].parse().map_err(|_| syntax(start, "bad number"))?;
                    out.push((start, Tok::Dec(v)));
                } else {
                    let v = src[start..i].parse().map_err(|_| syntax(start, "bad integer"))?;
                    out.push((start, Tok::Int(v)));
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push((start, Tok::Ident(src[start..i].to_string())));
            }
            _ => {
                const SYMBOLS: [&str; 20] = [
                    "<=", ">=", "!=", "!~", ".", "[", "]", "(", ")", "{", "}", ",", "+", "-", "*", "/", "&", "|", "=",
                    "~",
                ];
                let sym = SYMBOLS
                    .iter()
                    .chain(["<", ">"].iter())
                    .find(|s| src[i..].starts_with(**s))
                    .ok_or_else(|| syntax(i, "unexpected character"))?;
                out.push((start, Tok::Sym(sym)));
                i += sym.len();
            }
        }
    }
    out.push((src.len(), Tok::End));
    Ok(out)
}

/// A `'...'` or `` `...` `` literal with FHIRPath escapes; returns it and the offset after it.
fn string_literal(src: &str, open: usize) -> Result<(String, usize)> {
    let quote = src.as_bytes()[open] as char;
    let mut out = String::new();
    let mut chars = src[open + 1..].char_indices();
    while let Some((k, c)) = chars.next() {
        match c {
            c if c == quote => return Ok((out, open + 1 + k + 1)),
            '\\' => {
                let (_, e) = chars.next().ok_or(FhirPathError::Syntax(open, "unterminated string".into()))?;
                match e {
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    't' => out.push('\t'),
                    'f' => out.push('\u{c}'),
                    'u' => {
                        let hex: String = chars.by_ref().take(4).map(|(_, c)| c).collect();
                        let code = u32::from_str_radix(&hex, 16)
                            .ok()
                            .and_then(char::from_u32)
                            .ok_or(FhirPathError::Syntax(open, "bad \\u escape".into()))?;
                        out.push(code);
                    }
                    other => out.push(other),
                }
            }
            c => out.push(c),
        }
    }
    Err(FhirPathError::Syntax(open, "unterminated string".into()))
}

// ---------------------------------------------------------------------------------------------
// Parser (precedence climbing)

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
}

/// Parse an expression, compiling its regexes.
pub fn parse(src: &str) -> Result<Expr> {
    let mut p = Parser { toks: lex(src)?, pos: 0 };
    let e = p.expr(0)?;
    match p.peek() {
        Tok::End => Ok(e),
        _ => Err(p.error("unexpected text after the expression")),
    }
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos].1
    }

    fn next(&mut self) -> Tok {
        let t = self.toks[self.pos].1.clone();
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
        t
    }

    fn error(&self, m: &str) -> FhirPathError {
        FhirPathError::Syntax(self.toks[self.pos].0, m.to_string())
    }

    fn expect(&mut self, sym: &'static str) -> Result<()> {
        if *self.peek() == Tok::Sym(sym) {
            self.next();
            Ok(())
        } else {
            Err(self.error(&format!("expected '{sym}'")))
        }
    }

    fn infix(&self) -> Option<Op> {
        Some(match self.peek() {
            Tok::Sym(s) => match *s {
                "*" => Op::Mul,
                "/" => Op::Div,
                "+" => Op::Add,
                "-" => Op::Sub,
                "&" => Op::Concat,
                "|" => Op::Union,
                "<" => Op::Lt,
                ">" => Op::Gt,
                "<=" => Op::Le,
                ">=" => Op::Ge,
                "=" => Op::Eq,
                "!=" => Op::Ne,
                "~" => Op::Equiv,
                "!~" => Op::NotEquiv,
                _ => return None,
            },
            Tok::Ident(s) => match s.as_str() {
                "div" => Op::IntDiv,
                "mod" => Op::Mod,
                "in" => Op::In,
                "contains" => Op::Contains,
                "and" => Op::And,
                "or" => Op::Or,
                "xor" => Op::Xor,
                "implies" => Op::Implies,
                _ => return None,
            },
            _ => return None,
        })
    }

    fn expr(&mut self, min: u8) -> Result<Expr> {
        let mut lhs = self.unary()?;
        loop {
            if let Tok::Ident(k) = self.peek()
                && (k == "is" || k == "as")
                && TYPE_OP_PRECEDENCE >= min
            {
                let is = k == "is";
                self.next();
                let ty = self.type_specifier()?;
                lhs = if is { Expr::Is(Box::new(lhs), ty) } else { Expr::As(Box::new(lhs), ty) };
                continue;
            }
            let Some(op) = self.infix() else { break };
            let prec = op.precedence();
            if prec < min {
                break;
            }
            self.next();
            let rhs = self.expr(prec + 1)?;
            lhs = Expr::Binary(op, Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    fn type_specifier(&mut self) -> Result<String> {
        let mut name = match self.next() {
            Tok::Ident(s) | Tok::Quoted(s) => s,
            _ => return Err(self.error("expected a type name")),
        };
        while *self.peek() == Tok::Sym(".") {
            self.next();
            match self.next() {
                Tok::Ident(s) | Tok::Quoted(s) => name = s,
                _ => return Err(self.error("expected a type name")),
            }
        }
        Ok(name)
    }

    fn unary(&mut self) -> Result<Expr> {
        match self.peek() {
            Tok::Sym("-") => {
                self.next();
                Ok(Expr::Neg(Box::new(self.unary()?)))
            }
            Tok::Sym("+") => {
                self.next();
                self.unary()
            }
            _ => self.postfix(),
        }
    }

    fn postfix(&mut self) -> Result<Expr> {
        let mut e = self.primary()?;
        loop {
            match self.peek() {
                Tok::Sym(".") => {
                    self.next();
                    let name = match self.next() {
                        Tok::Ident(s) | Tok::Quoted(s) => s,
                        _ => return Err(self.error("expected a name after '.'")),
                    };
                    e = if *self.peek() == Tok::Sym("(") {
                        self.call(Some(Box::new(e)), &name)?
                    } else {
                        Expr::Member(Some(Box::new(e)), name)
                    };
                }
                Tok::Sym("[") => {
                    self.next();
                    let idx = self.expr(0)?;
                    self.expect("]")?;
                    e = Expr::Indexer(Box::new(e), Box::new(idx));
                }
                _ => return Ok(e),
            }
        }
    }

    fn primary(&mut self) -> Result<Expr> {
        match self.next() {
            Tok::Str(s) => Ok(Expr::Str(s)),
            Tok::Int(i) => Ok(Expr::Int(i)),
            Tok::Dec(d) => Ok(Expr::Dec(d)),
            Tok::Temporal(t) => Ok(Expr::Temporal(t)),
            Tok::Var(v) => Ok(Expr::Var(v)),
            Tok::Dollar(d) => match d.as_str() {
                "this" => Ok(Expr::This),
                "index" => Ok(Expr::Index),
                _ => Err(FhirPathError::Unsupported(format!("${d}"))),
            },
            Tok::Sym("(") => {
                let e = self.expr(0)?;
                self.expect(")")?;
                Ok(e)
            }
            Tok::Sym("{") => {
                self.expect("}")?;
                Ok(Expr::Empty)
            }
            Tok::Ident(s) if s == "true" => Ok(Expr::Bool(true)),
            Tok::Ident(s) if s == "false" => Ok(Expr::Bool(false)),
            Tok::Ident(s) | Tok::Quoted(s) => {
                if *self.peek() == Tok::Sym("(") {
                    self.call(None, &s)
                } else {
                    Ok(Expr::Member(None, s))
                }
            }
            _ => Err(self.error("expected an expression")),
        }
    }

    fn call(&mut self, target: Option<Box<Expr>>, name: &str) -> Result<Expr> {
        let (func, min, max) =
            Func::from_name(name).ok_or_else(|| FhirPathError::Unsupported(format!("function {name}()")))?;
        self.expect("(")?;
        let mut args = Vec::new();
        let mut type_name = None;
        if *self.peek() != Tok::Sym(")") {
            if matches!(func, Func::OfType | Func::As | Func::Is) {
                type_name = Some(self.type_specifier()?);
            } else {
                loop {
                    args.push(self.expr(0)?);
                    if *self.peek() == Tok::Sym(",") {
                        self.next();
                    } else {
                        break;
                    }
                }
            }
        }
        self.expect(")")?;
        let n = args.len() + usize::from(type_name.is_some());
        if n < min || n > max {
            return Err(self.error(&format!("{name}() takes {min} to {max} arguments")));
        }
        let regex = match (func, args.first()) {
            (Func::MatchesFull, Some(Expr::Str(p))) => Some(
                Regex::new(&format!("^(?:{p})$"))
                    .map_err(|_| FhirPathError::Unsupported(format!("regex in {name}()")))?,
            ),
            (Func::Matches | Func::ReplaceMatches, Some(Expr::Str(p))) => Some(
                regex::RegexBuilder::new(p)
                    .unicode(true)
                    .build()
                    .map_err(|_| FhirPathError::Unsupported(format!("regex in {name}()")))?,
            ),
            (Func::Matches | Func::ReplaceMatches | Func::MatchesFull, _) => {
                return Err(FhirPathError::Unsupported(format!("{name}() with a computed pattern")));
            }
            _ => None,
        };
        Ok(Expr::Call { target, func, args, regex, type_name })
    }
}

// ---------------------------------------------------------------------------------------------
// Values

static NULL: Value = Value::Null;

/// One item of a collection.
#[derive(Debug, Clone)]
pub enum Item<'a> {
    /// A node of the instance: its value (`null` when only the `_element` twin exists), the
    /// twin (id and extensions of a primitive) and the type named by a choice property or
    /// `resourceType`, when known.
    Node {
        v: &'a Value,
        ext: Option<&'a Value>,
        ty: Option<&'a str>,
    },
    Bool(bool),
    Int(i64),
    Dec(f64),
    Str(Cow<'a, str>),
    Temporal(Cow<'a, str>),
}

/// Primitive view of an item.
enum Prim<'x> {
    Bool(bool),
    Int(i64),
    Dec(f64),
    Str(&'x str),
    Temporal(&'x str),
    Complex(&'x Value),
    Null,
}

impl<'a> Item<'a> {
    fn node(v: &'a Value) -> Self {
        Item::Node { v, ext: None, ty: None }
    }

    fn prim(&self) -> Prim<'_> {
        match self {
            Item::Bool(b) => Prim::Bool(*b),
            Item::Int(i) => Prim::Int(*i),
            Item::Dec(d) => Prim::Dec(*d),
            Item::Str(s) => Prim::Str(s),
            Item::Temporal(s) => Prim::Temporal(s),
            Item::Node { v, .. } => match v {
                Value::Bool(b) => Prim::Bool(*b),
                Value::Number(n) => match n.as_i64() {
                    Some(i) if !n.is_f64() => Prim::Int(i),
                    _ => Prim::Dec(n.as_f64().unwrap_or(f64::NAN)),
                },
                Value::String(s) => Prim::Str(s),
                Value::Null => Prim::Null,
                other => Prim::Complex(other),
            },
        }
    }

    /// The item as FHIRPath text: booleans, numbers, strings and date/times as written,
    /// complex values as their JSON.
    pub fn to_text(&self) -> String {
        match self.prim() {
            Prim::Bool(b) => b.to_string(),
            Prim::Int(i) => i.to_string(),
            Prim::Dec(d) => d.to_string(),
            Prim::Str(s) | Prim::Temporal(s) => s.to_string(),
            Prim::Complex(c) => c.to_string(),
            Prim::Null => String::new(),
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self.prim() {
            Prim::Str(s) | Prim::Temporal(s) => Some(s),
            _ => None,
        }
    }

    /// The item's type name, as far as it is known (see the module docs).
    fn type_name(&self) -> Option<&str> {
        match self {
            Item::Bool(_) => Some("Boolean"),
            Item::Int(_) => Some("Integer"),
            Item::Dec(_) => Some("Decimal"),
            Item::Str(_) => Some("String"),
            Item::Temporal(_) => Some("DateTime"),
            Item::Node { v, ty, .. } => match (ty, v) {
                (Some(t), _) => Some(t),
                (None, Value::Object(o)) => o.get("resourceType").and_then(Value::as_str),
                (None, Value::Bool(_)) => Some("boolean"),
                (None, Value::Number(n)) if n.is_f64() => Some("decimal"),
                (None, Value::Number(_)) => Some("integer"),
                (None, Value::String(_)) => Some("string"),
                _ => None,
            },
        }
    }

    fn is_type(&self, name: &str) -> bool {
        let name = name.rsplit('.').next().unwrap_or(name);
        match self.type_name() {
            Some(t) if t.eq_ignore_ascii_case(name) => true,
            // A resource is also a Resource / DomainResource.
            Some(_) if matches!(name, "Resource" | "DomainResource") => {
                matches!(self, Item::Node { v: Value::Object(o), .. } if o.contains_key("resourceType"))
            }
            _ => false,
        }
    }
}

/// A collection: most hold zero or one item, so two live inline without allocating.
pub type Coll<'a> = SmallVec<[Item<'a>; 2]>;

/// The evaluation environment of one invariant.
#[derive(Clone, Copy)]
pub struct Env<'a> {
    /// `%resource`: the resource holding the element.
    pub resource: &'a Value,
    /// `%rootResource`: the container of a contained resource, else the resource itself.
    pub root: &'a Value,
    /// `%context`: the element the invariant is defined on.
    pub context: &'a Value,
    /// Names of the choice elements (`value`, `effective`, ...) of the model: `response` must
    /// not find `responseCode` where `response` is not a choice.
    pub choices: &'a FxHashSet<String>,
}

struct Scope<'s, 'a> {
    env: Env<'a>,
    this: Option<&'s Item<'a>>,
    index: Option<usize>,
}

/// Evaluate `expr` with `focus` as its input and `$this`; `ty` is the focus's type, if known.
pub fn evaluate<'a>(expr: &'a Expr, focus: &'a Value, ty: Option<&'a str>, env: Env<'a>) -> Result<Coll<'a>> {
    let item = Item::Node { v: focus, ext: None, ty };
    let input = smallvec![item.clone()];
    let scope = Scope { env, this: Some(&item), index: None };
    eval(expr, &input, &scope)
}

/// An invariant holds unless it evaluates to `false` (empty counts as holding, so an
/// undecidable comparison never produces a false error).
pub fn holds(result: &[Item<'_>]) -> bool {
    !matches!(result, [one] if matches!(one.prim(), Prim::Bool(false)))
}

fn eval_err(m: impl Into<String>) -> FhirPathError {
    FhirPathError::Eval(m.into())
}

fn eval<'a>(e: &'a Expr, input: &Coll<'a>, s: &Scope<'_, 'a>) -> Result<Coll<'a>> {
    Ok(match e {
        Expr::Empty => smallvec![],
        Expr::Bool(b) => smallvec![Item::Bool(*b)],
        Expr::Str(x) => smallvec![Item::Str(Cow::Borrowed(x))],
        Expr::Int(i) => smallvec![Item::Int(*i)],
        Expr::Dec(d) => smallvec![Item::Dec(*d)],
        Expr::Temporal(t) => smallvec![Item::Temporal(Cow::Owned(t.trim_start_matches('T').to_string()))],
        Expr::This => s.this.cloned().into_iter().collect(),
        Expr::Index => s.index.map(|i| Item::Int(i as i64)).into_iter().collect(),
        Expr::Var(v) => match v.as_str() {
            "resource" => smallvec![Item::node(s.env.resource)],
            "rootResource" => smallvec![Item::node(s.env.root)],
            "context" => smallvec![Item::node(s.env.context)],
            "ucum" => smallvec![Item::Str(Cow::Borrowed("http://unitsofmeasure.org"))],
            "sct" => smallvec![Item::Str(Cow::Borrowed("http://snomed.info/sct"))],
            "loinc" => smallvec![Item::Str(Cow::Borrowed("http://loinc.org"))],
            other => return Err(FhirPathError::Unsupported(format!("%{other}"))),
        },
        Expr::Member(target, name) => {
            let base = match target {
                Some(t) => eval(t, input, s)?,
                None => input.clone(),
            };
            let mut out = Coll::new();
            for item in &base {
                // A leading type name (`Patient.name` evaluated on a Patient) is the item itself.
                if target.is_none()
                    && name.starts_with(|c: char| c.is_ascii_uppercase())
                    && item.type_name() == Some(name.as_str())
                {
                    out.push(item.clone());
                    continue;
                }
                member(item, name, s.env.choices, &mut out);
            }
            out
        }
        Expr::Indexer(target, idx) => {
            let base = eval(target, input, s)?;
            let i = eval(idx, input, s)?;
            match i.as_slice() {
                [one] => match one.prim() {
                    Prim::Int(n) if n >= 0 => base.into_iter().nth(n as usize).into_iter().collect(),
                    _ => smallvec![],
                },
                _ => smallvec![],
            }
        }
        Expr::Neg(x) => {
            let v = eval(x, input, s)?;
            match v.as_slice() {
                [] => smallvec![],
                [one] => match one.prim() {
                    Prim::Int(i) => smallvec![Item::Int(-i)],
                    Prim::Dec(d) => smallvec![Item::Dec(-d)],
                    _ => return Err(eval_err("unary minus on a non-number")),
                },
                _ => return Err(eval_err("unary minus on a collection")),
            }
        }
        Expr::Is(x, ty) => {
            let v = eval(x, input, s)?;
            match v.as_slice() {
                [] => smallvec![],
                [one] => smallvec![Item::Bool(one.is_type(ty))],
                _ => return Err(eval_err("'is' on a collection")),
            }
        }
        Expr::As(x, ty) => eval(x, input, s)?.into_iter().filter(|i| i.is_type(ty)).collect(),
        Expr::Binary(op, l, r) => binary(*op, l, r, input, s)?,
        Expr::Call { target, func, args, regex, type_name } => {
            let base = match target {
                Some(t) => eval(t, input, s)?,
                None => input.clone(),
            };
            call(*func, base, args, regex.as_ref(), type_name.as_deref(), input, s)?
        }
    })
}

/// Children named `name` of one item, flattened, with choice types and `_twins` resolved.
fn member<'a>(item: &Item<'a>, name: &str, choices: &FxHashSet<String>, out: &mut Coll<'a>) {
    let Item::Node { v, ext, .. } = item else { return };
    let o = match v {
        Value::Object(o) => o,
        // The id and extensions of a primitive live in its twin.
        _ => {
            if let Some(Value::Object(t)) = ext
                && let Some(x) = t.get(name)
            {
                push_values(x, None, None, out);
            }
            return;
        }
    };
    if name == "resourceType" {
        return;
    }
    let twin = twin_of(o, name);
    if let Some(x) = o.get(name) {
        push_values(x, twin, None, out);
        return;
    }
    if let Some(t) = twin {
        push_values(&NULL, Some(t), None, out);
        return;
    }
    if !choices.contains(name) {
        return;
    }
    for (k, x) in o {
        if let Some(suffix) = k.strip_prefix(name)
            && suffix.starts_with(|c: char| c.is_ascii_uppercase())
        {
            push_values(x, twin_of(o, k), Some(suffix), out);
            return;
        }
    }
}

/// The `_name` twin of a property. Most objects have no `_` keys at all, so a scan of the
/// keys' first bytes spares the (SipHash) lookup; the key is built in a stack buffer.
pub(super) fn twin_of<'a>(o: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    if !o.keys().any(|k| k.starts_with('_')) {
        return None;
    }
    o.iter().find(|(k, _)| k.len() == name.len() + 1 && k.starts_with('_') && &k[1..] == name).map(|(_, v)| v)
}

fn push_values<'a>(x: &'a Value, twin: Option<&'a Value>, ty: Option<&'a str>, out: &mut Coll<'a>) {
    match x {
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                let t = twin.and_then(|t| t.get(i)).filter(|t| !t.is_null());
                if !v.is_null() || t.is_some() {
                    out.push(Item::Node { v, ext: t, ty });
                }
            }
        }
        Value::Null => {
            // Only the twin: an array of twins pairs with nothing; one twin is one element.
            match twin {
                Some(Value::Array(ts)) => {
                    out.extend(ts.iter().filter(|t| !t.is_null()).map(|t| Item::Node { v: &NULL, ext: Some(t), ty }))
                }
                Some(t) => out.push(Item::Node { v: &NULL, ext: Some(t), ty }),
                None => {}
            }
        }
        v => out.push(Item::Node { v, ext: twin, ty }),
    }
}

fn children<'a>(item: &Item<'a>, out: &mut Coll<'a>) {
    let Item::Node { v, ext, .. } = item else { return };
    let o = match v {
        Value::Object(o) => o,
        _ => {
            if let Some(Value::Object(t)) = ext {
                for x in t.values() {
                    push_values(x, None, None, out);
                }
            }
            return;
        }
    };
    for (k, x) in o {
        if k == "resourceType" || k == "fhir_comments" {
            continue;
        }
        if let Some(name) = k.strip_prefix('_') {
            if !o.contains_key(name) {
                push_values(&NULL, Some(x), None, out);
            }
            continue;
        }
        push_values(x, twin_of(o, k), None, out);
    }
}

fn to_bool(c: &[Item<'_>]) -> Result<Option<bool>> {
    match c {
        [] => Ok(None),
        [one] => Ok(Some(match one.prim() {
            Prim::Bool(b) => b,
            _ => true,
        })),
        _ => Err(eval_err("a collection of several items used as a boolean")),
    }
}

fn single<'c, 'a>(c: &'c [Item<'a>], what: &str) -> Result<Option<&'c Item<'a>>> {
    match c {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        _ => Err(eval_err(format!("{what} expects one item"))),
    }
}

fn binary<'a>(op: Op, l: &'a Expr, r: &'a Expr, input: &Coll<'a>, s: &Scope<'_, 'a>) -> Result<Coll<'a>> {
    let lv = eval(l, input, s)?;
    if matches!(op, Op::And | Op::Or | Op::Xor | Op::Implies) {
        return logic(op, to_bool(&lv)?, || to_bool(&eval(r, input, s)?));
    }
    let rv = eval(r, input, s)?;
    let b = |x: Option<bool>| x.map(Item::Bool).into_iter().collect::<Coll<'a>>();
    Ok(match op {
        Op::And | Op::Or | Op::Xor | Op::Implies => unreachable!("handled above"),
        Op::Union => union(lv, rv),
        Op::In | Op::Contains => {
            let (item, coll) = if op == Op::In { (lv, rv) } else { (rv, lv) };
            match single(&item, "in")? {
                None => smallvec![],
                Some(x) => smallvec![Item::Bool(coll.iter().any(|y| equal(x, y) == Some(true)))],
            }
        }
        Op::Eq | Op::Ne => {
            if lv.is_empty() || rv.is_empty() {
                return Ok(smallvec![]);
            }
            let eq = if lv.len() != rv.len() {
                Some(false)
            } else {
                let mut all = Some(true);
                for (x, y) in lv.iter().zip(&rv) {
                    match equal(x, y) {
                        Some(true) => {}
                        Some(false) => {
                            all = Some(false);
                            break;
                        }
                        None => all = None,
                    }
                }
                all
            };
            b(if op == Op::Eq { eq } else { eq.map(|x| !x) })
        }
        Op::Equiv | Op::NotEquiv => {
            // Equivalence of collections ignores order.
            let eq = lv.len() == rv.len() && lv.iter().all(|x| rv.iter().any(|y| equivalent(x, y)));
            smallvec![Item::Bool(if op == Op::Equiv { eq } else { !eq })]
        }
        Op::Lt | Op::Gt | Op::Le | Op::Ge => {
            let (Some(x), Some(y)) = (single(&lv, "comparison")?, single(&rv, "comparison")?) else {
                return Ok(smallvec![]);
            };
            b(compare(x, y)?.map(|o| match op {
                Op::Lt => o == Ordering::Less,
                Op::Gt => o == Ordering::Greater,
                Op::Le => o != Ordering::Greater,
                _ => o != Ordering::Less,
            }))
        }
        Op::Concat => {
            let x = single(&lv, "&")?.and_then(Item::as_str).unwrap_or("").to_string();
            let y = single(&rv, "&")?.and_then(Item::as_str).unwrap_or("");
            smallvec![Item::Str(Cow::Owned(x + y))]
        }
        Op::Add | Op::Sub | Op::Mul | Op::Div | Op::IntDiv | Op::Mod => {
            let (Some(x), Some(y)) = (single(&lv, "arithmetic")?, single(&rv, "arithmetic")?) else {
                return Ok(smallvec![]);
            };
            arithmetic(op, x, y)?.into_iter().collect()
        }
    })
}

/// Three-valued `and`, `or`, `xor`, `implies` (`None` is empty); the right side is evaluated
/// only when the left does not decide.
fn logic<'a>(op: Op, a: Option<bool>, right: impl FnOnce() -> Result<Option<bool>>) -> Result<Coll<'a>> {
    let decided = match (op, a) {
        (Op::And, Some(false)) => Some(false),
        (Op::Or, Some(true)) | (Op::Implies, Some(false)) => Some(true),
        _ => None,
    };
    let result = match decided {
        Some(d) => Some(d),
        None => {
            let c = right()?;
            match op {
                Op::And => match (a, c) {
                    (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                },
                Op::Or => match (a, c) {
                    (_, Some(true)) => Some(true),
                    (Some(false), Some(false)) => Some(false),
                    _ => None,
                },
                Op::Xor => a.zip(c).map(|(x, y)| x != y),
                _ => match (a, c) {
                    (_, Some(true)) => Some(true),
                    (Some(true), Some(false)) => Some(false),
                    _ => None,
                },
            }
        }
    };
    Ok(result.map(Item::Bool).into_iter().collect())
}

fn arithmetic<'a>(op: Op, x: &Item<'a>, y: &Item<'a>) -> Result<Option<Item<'a>>> {
    Ok(match (x.prim(), y.prim()) {
        (Prim::Str(a), Prim::Str(b)) if op == Op::Add => Some(Item::Str(Cow::Owned(format!("{a}{b}")))),
        (Prim::Int(a), Prim::Int(b)) => match op {
            Op::Add => a.checked_add(b).map(Item::Int),
            Op::Sub => a.checked_sub(b).map(Item::Int),
            Op::Mul => a.checked_mul(b).map(Item::Int),
            Op::Div => (b != 0).then(|| Item::Dec(a as f64 / b as f64)),
            Op::IntDiv => a.checked_div(b).map(Item::Int),
            _ => a.checked_rem(b).map(Item::Int),
        },
        (a, b) => {
            let (Some(a), Some(b)) = (number(&a), number(&b)) else {
                return Err(eval_err("arithmetic on values that are not numbers"));
            };
            match op {
                Op::Add => Some(Item::Dec(a + b)),
                Op::Sub => Some(Item::Dec(a - b)),
                Op::Mul => Some(Item::Dec(a * b)),
                Op::Div => (b != 0.0).then(|| Item::Dec(a / b)),
                Op::IntDiv => (b != 0.0).then(|| Item::Int((a / b).trunc() as i64)),
                _ => (b != 0.0).then(|| Item::Dec(a % b)),
            }
        }
    })
}

fn number(p: &Prim<'_>) -> Option<f64> {
    match p {
        Prim::Int(i) => Some(*i as f64),
        Prim::Dec(d) => Some(*d),
        _ => None,
    }
}

/// `=`: `None` when undecidable (date/times of different precision).
fn equal(x: &Item<'_>, y: &Item<'_>) -> Option<bool> {
    match (x.prim(), y.prim()) {
        (Prim::Bool(a), Prim::Bool(b)) => Some(a == b),
        (a @ (Prim::Int(_) | Prim::Dec(_)), b @ (Prim::Int(_) | Prim::Dec(_))) => Some(number(&a) == number(&b)),
        (Prim::Temporal(a), Prim::Str(b) | Prim::Temporal(b)) | (Prim::Str(a), Prim::Temporal(b)) => {
            temporal_cmp(a, b).map(|o| o == Ordering::Equal)
        }
        (Prim::Str(a), Prim::Str(b)) => Some(a == b),
        (Prim::Complex(a), Prim::Complex(b)) => Some(a == b),
        (Prim::Null, _) | (_, Prim::Null) => None,
        _ => Some(false),
    }
}

fn equivalent(x: &Item<'_>, y: &Item<'_>) -> bool {
    match (x.prim(), y.prim()) {
        (Prim::Str(a), Prim::Str(b)) => {
            let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
            norm(a) == norm(b)
        }
        _ => equal(x, y) == Some(true),
    }
}

fn compare(x: &Item<'_>, y: &Item<'_>) -> Result<Option<Ordering>> {
    Ok(match (x.prim(), y.prim()) {
        (a @ (Prim::Int(_) | Prim::Dec(_)), b @ (Prim::Int(_) | Prim::Dec(_))) => {
            number(&a).and_then(|a| number(&b).and_then(|b| a.partial_cmp(&b)))
        }
        (Prim::Str(a) | Prim::Temporal(a), Prim::Str(b) | Prim::Temporal(b)) => {
            if looks_temporal(a) && looks_temporal(b) { temporal_cmp(a, b) } else { Some(a.cmp(b)) }
        }
        (Prim::Null, _) | (_, Prim::Null) => None,
        _ => return Err(eval_err("comparison of values of different kinds")),
    })
}

fn looks_temporal(s: &str) -> bool {
    let b = s.as_bytes();
    (b.len() >= 4 && b[..4].iter().all(u8::is_ascii_digit) && (b.len() == 4 || b[4] == b'-'))
        || (b.len() >= 5 && b[2] == b':' && b[..2].iter().all(u8::is_ascii_digit))
}

/// A date/time split into components (year, month, day, hour, minute, second) with its
/// precision (how many components are given) and time-zone offset in minutes.
struct Temporal {
    parts: [f64; 6],
    precision: usize,
    offset: Option<i64>,
}

fn parse_temporal(s: &str) -> Option<Temporal> {
    let mut t = Temporal { parts: [0.0, 1.0, 1.0, 0.0, 0.0, 0.0], precision: 0, offset: None };
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None if s.contains(':') => ("", Some(s)),
        None => (s, None),
    };
    if !date.is_empty() {
        for (i, p) in date.split('-').enumerate() {
            if i > 2 {
                return None;
            }
            t.parts[i] = p.parse().ok()?;
            t.precision = i + 1;
        }
    }
    if let Some(time) = time.filter(|x| !x.is_empty()) {
        let (clock, offset) = if let Some(c) = time.strip_suffix('Z') {
            (c, Some(0))
        } else if let Some(k) = time.rfind(['+', '-']) {
            let (c, o) = time.split_at(k);
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let (h, m) = o[1..].split_once(':')?;
            (c, Some(sign * (h.parse::<i64>().ok()? * 60 + m.parse::<i64>().ok()?)))
        } else {
            (time, None)
        };
        t.offset = offset;
        for (i, p) in clock.split(':').enumerate() {
            if i > 2 {
                return None;
            }
            t.parts[3 + i] = p.parse().ok()?;
            t.precision = 4 + i;
        }
    }
    Some(t)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Compare two date/times; `None` when they differ only below the coarser precision.
fn temporal_cmp(a: &str, b: &str) -> Option<Ordering> {
    let (mut x, mut y) = (parse_temporal(a)?, parse_temporal(b)?);
    // With times and zones on both sides, compare instants.
    if x.precision >= 5
        && y.precision >= 5
        && let (Some(ox), Some(oy)) = (x.offset, y.offset)
    {
        let secs = |t: &Temporal, o: i64| {
            let days = days_from_civil(t.parts[0] as i64, t.parts[1] as i64, t.parts[2] as i64);
            (days * 86_400 + t.parts[3] as i64 * 3600 + (t.parts[4] as i64 - o) * 60) as f64 + t.parts[5]
        };
        if x.precision == y.precision || (x.precision >= 6 && y.precision >= 6) {
            return secs(&x, ox).partial_cmp(&secs(&y, oy));
        }
        x.parts[4] -= ox as f64;
        y.parts[4] -= oy as f64;
    }
    let common = x.precision.min(y.precision);
    for i in 0..common {
        match x.parts[i].partial_cmp(&y.parts[i])? {
            Ordering::Equal => {}
            o => return Some(o),
        }
    }
    (x.precision == y.precision).then_some(Ordering::Equal)
}

fn union<'a>(a: Coll<'a>, b: Coll<'a>) -> Coll<'a> {
    let mut out: Coll<'a> = Coll::with_capacity(a.len() + b.len());
    for x in a.into_iter().chain(b) {
        if !out.iter().any(|y| equal(&x, y) == Some(true)) {
            out.push(x);
        }
    }
    out
}

fn string_arg<'a>(args: &'a [Expr], k: usize, input: &Coll<'a>, s: &Scope<'_, 'a>) -> Result<Option<String>> {
    let v = eval(&args[k], input, s)?;
    Ok(single(&v, "argument")?.and_then(|i| i.as_str().map(str::to_string)))
}

fn int_arg<'a>(args: &'a [Expr], k: usize, input: &Coll<'a>, s: &Scope<'_, 'a>) -> Result<Option<i64>> {
    let v = eval(&args[k], input, s)?;
    Ok(match single(&v, "argument")?.map(Item::prim) {
        Some(Prim::Int(i)) => Some(i),
        Some(_) => return Err(eval_err("expected an integer argument")),
        None => None,
    })
}

fn call<'a>(
    func: Func,
    base: Coll<'a>,
    args: &'a [Expr],
    regex: Option<&Regex>,
    type_name: Option<&str>,
    input: &Coll<'a>,
    s: &Scope<'_, 'a>,
) -> Result<Coll<'a>> {
    use Func::*;
    let bool1 = |b: bool| smallvec![Item::Bool(b)];
    if func == Repeat {
        let mut out: Coll<'a> = Coll::new();
        let mut frontier = base;
        while !frontier.is_empty() {
            let mut next = Coll::new();
            for (i, item) in frontier.iter().enumerate() {
                let one = smallvec![item.clone()];
                let scope = Scope { env: s.env, this: Some(item), index: Some(i) };
                for r in eval(&args[0], &one, &scope)? {
                    if !out.iter().any(|y| equal(&r, y) == Some(true)) {
                        out.push(r.clone());
                        next.push(r);
                    }
                }
            }
            frontier = next;
        }
        return Ok(out);
    }
    if func.iterates() && !args.is_empty() {
        let mut kept = Coll::new();
        for (i, item) in base.iter().enumerate() {
            let one = smallvec![item.clone()];
            let scope = Scope { env: s.env, this: Some(item), index: Some(i) };
            let r = eval(&args[0], &one, &scope)?;
            match func {
                Select => kept.extend(r),
                _ => {
                    if to_bool(&r)? == Some(true) {
                        kept.push(item.clone());
                    } else if func == All {
                        return Ok(bool1(false));
                    }
                }
            }
        }
        return Ok(match func {
            Exists => bool1(!kept.is_empty()),
            All => bool1(true),
            _ => kept,
        });
    }
    // String functions take a single string input; empty input gives empty.
    let text = || -> Result<Option<String>> {
        Ok(match single(&base, "a string function")? {
            None => None,
            Some(i) => match i.as_str() {
                Some(t) => Some(t.to_string()),
                None => return Err(eval_err("a string function on a value that is not a string")),
            },
        })
    };
    Ok(match func {
        Empty => bool1(base.is_empty()),
        Exists => bool1(!base.is_empty()),
        All => bool1(true),
        Where | Select => base,
        Not => match to_bool(&base)? {
            Some(b) => bool1(!b),
            None => smallvec![],
        },
        Count => smallvec![Item::Int(base.len() as i64)],
        First => base.into_iter().take(1).collect(),
        Last => base.into_iter().next_back().into_iter().collect(),
        Tail => base.into_iter().skip(1).collect(),
        Skip => {
            let n = int_arg(args, 0, input, s)?.unwrap_or(0).max(0) as usize;
            base.into_iter().skip(n).collect()
        }
        Take => {
            let n = int_arg(args, 0, input, s)?.unwrap_or(0).max(0) as usize;
            base.into_iter().take(n).collect()
        }
        Single => match base.len() {
            0 | 1 => base,
            _ => return Err(eval_err("single() on several items")),
        },
        IsDistinct => {
            let n = base.len();
            bool1(union(base, smallvec![]).len() == n)
        }
        Distinct => union(base, smallvec![]),
        StartsWith | EndsWith | Contains => {
            let (Some(t), Some(a)) = (text()?, string_arg(args, 0, input, s)?) else { return Ok(smallvec![]) };
            bool1(match func {
                StartsWith => t.starts_with(&a),
                EndsWith => t.ends_with(&a),
                _ => t.contains(&a),
            })
        }
        Matches => match (text()?, regex) {
            (Some(t), Some(r)) => bool1(r.is_match(&t)),
            _ => smallvec![],
        },
        ReplaceMatches => {
            let (Some(t), Some(r), Some(with)) = (text()?, regex, string_arg(args, 1, input, s)?) else {
                return Ok(smallvec![]);
            };
            smallvec![Item::Str(Cow::Owned(r.replace_all(&t, with.as_str()).into_owned()))]
        }
        Replace => {
            let (Some(t), Some(a), Some(b)) = (text()?, string_arg(args, 0, input, s)?, string_arg(args, 1, input, s)?)
            else {
                return Ok(smallvec![]);
            };
            smallvec![Item::Str(Cow::Owned(t.replace(&a, &b)))]
        }
        Length => text()?.map(|t| Item::Int(t.chars().count() as i64)).into_iter().collect(),
        Upper => text()?.map(|t| Item::Str(Cow::Owned(t.to_uppercase()))).into_iter().collect(),
        Lower => text()?.map(|t| Item::Str(Cow::Owned(t.to_lowercase()))).into_iter().collect(),
        IndexOf => {
            let (Some(t), Some(a)) = (text()?, string_arg(args, 0, input, s)?) else { return Ok(smallvec![]) };
            let at = t.find(&a).map(|b| t[..b].chars().count() as i64).unwrap_or(-1);
            smallvec![Item::Int(at)]
        }
        Substring => {
            let Some(t) = text()? else { return Ok(smallvec![]) };
            let Some(start) = int_arg(args, 0, input, s)? else { return Ok(smallvec![]) };
            let chars: Vec<char> = t.chars().collect();
            if start < 0 || start as usize >= chars.len() {
                return Ok(smallvec![]);
            }
            let len = match args.get(1) {
                Some(_) => int_arg(args, 1, input, s)?.unwrap_or(0).max(0) as usize,
                None => chars.len(),
            };
            let end = (start as usize).saturating_add(len).min(chars.len());
            smallvec![Item::Str(Cow::Owned(chars[start as usize..end].iter().collect()))]
        }
        ToInteger | ConvertsToInteger => {
            let v = match single(&base, "toInteger()")?.map(Item::prim) {
                None => return Ok(smallvec![]),
                Some(Prim::Int(i)) => Some(i),
                Some(Prim::Bool(b)) => Some(i64::from(b)),
                Some(Prim::Str(t)) => t.parse::<i64>().ok(),
                Some(_) => None,
            };
            if func == ConvertsToInteger { bool1(v.is_some()) } else { v.map(Item::Int).into_iter().collect() }
        }
        ToDecimal => match single(&base, "toDecimal()")?.map(Item::prim) {
            Some(Prim::Int(i)) => smallvec![Item::Dec(i as f64)],
            Some(Prim::Dec(d)) => smallvec![Item::Dec(d)],
            Some(Prim::Str(t)) => t.parse::<f64>().ok().map(Item::Dec).into_iter().collect(),
            _ => smallvec![],
        },
        ToString => match single(&base, "toString()")?.map(Item::prim) {
            Some(Prim::Str(t) | Prim::Temporal(t)) => smallvec![Item::Str(Cow::Owned(t.to_string()))],
            Some(Prim::Int(i)) => smallvec![Item::Str(Cow::Owned(i.to_string()))],
            Some(Prim::Dec(d)) => smallvec![Item::Str(Cow::Owned(d.to_string()))],
            Some(Prim::Bool(b)) => smallvec![Item::Str(Cow::Owned(b.to_string()))],
            _ => smallvec![],
        },
        HasValue => bool1(matches!(base.as_slice(), [Item::Node { v, .. }] if !v.is_null() && !v.is_object())),
        Trace => base,
        Children => {
            let mut out = Coll::new();
            for i in &base {
                children(i, &mut out);
            }
            out
        }
        Descendants => {
            let mut out = Coll::new();
            for i in &base {
                children(i, &mut out);
            }
            let mut k = 0;
            while k < out.len() {
                let item = out[k].clone();
                children(&item, &mut out);
                k += 1;
            }
            out
        }
        Combine => {
            let mut out = base;
            out.extend(eval(&args[0], input, s)?);
            out
        }
        Union => union(base, eval(&args[0], input, s)?),
        Intersect => {
            let other = eval(&args[0], input, s)?;
            let kept = base.into_iter().filter(|x| other.iter().any(|y| equal(x, y) == Some(true))).collect();
            union(kept, smallvec![])
        }
        Exclude => {
            let other = eval(&args[0], input, s)?;
            base.into_iter().filter(|x| !other.iter().any(|y| equal(x, y) == Some(true))).collect()
        }
        SubsetOf | SupersetOf => {
            let other = eval(&args[0], input, s)?;
            let (small, big) = if func == SubsetOf { (&base, &other) } else { (&other, &base) };
            bool1(small.iter().all(|x| big.iter().any(|y| equal(x, y) == Some(true))))
        }
        Iif => {
            let cond = match single(&base, "iif()")? {
                Some(item) => {
                    let one = smallvec![item.clone()];
                    let scope = Scope { env: s.env, this: Some(item), index: None };
                    to_bool(&eval(&args[0], &one, &scope)?)?
                }
                None => to_bool(&eval(&args[0], input, s)?)?,
            };
            match (cond, args.get(2)) {
                (Some(true), _) => eval(&args[1], &base, s)?,
                (_, Some(other)) => eval(other, &base, s)?,
                _ => smallvec![],
            }
        }
        HtmlChecks => bool1(base.iter().all(|i| i.as_str().is_none_or(|d| super::narrative::check(d).is_ok()))),
        Extension => {
            let Some(url) = string_arg(args, 0, input, s)? else { return Ok(smallvec![]) };
            let mut exts = Coll::new();
            for i in &base {
                member(i, "extension", s.env.choices, &mut exts);
            }
            exts.into_iter()
                .filter(|e| matches!(e, Item::Node { v, .. } if v.get("url").and_then(Value::as_str) == Some(&url)))
                .collect()
        }
        OfType | As => base.into_iter().filter(|i| i.is_type(type_name.unwrap_or_default())).collect(),
        Is => match single(&base, "is()")? {
            Some(i) => bool1(i.is_type(type_name.unwrap_or_default())),
            None => smallvec![],
        },
        Repeat => unreachable!("handled above"),
        Trim => text()?.map(|t| Item::Str(Cow::Owned(t.trim().to_string()))).into_iter().collect(),
        ToChars => {
            text()?.map(|t| t.chars().map(|c| Item::Str(Cow::Owned(c.to_string()))).collect()).unwrap_or_default()
        }
        Split => {
            let (Some(t), Some(sep)) = (text()?, string_arg(args, 0, input, s)?) else { return Ok(smallvec![]) };
            t.split(sep.as_str()).map(|p| Item::Str(Cow::Owned(p.to_string()))).collect()
        }
        Join => {
            let sep = match args.first() {
                Some(_) => string_arg(args, 0, input, s)?.unwrap_or_default(),
                None => String::new(),
            };
            let parts: Vec<String> = base.iter().filter_map(|i| i.as_str().map(str::to_string)).collect();
            smallvec![Item::Str(Cow::Owned(parts.join(&sep)))]
        }
        MatchesFull => match (text()?, regex) {
            (Some(t), Some(r)) => bool1(r.is_match(&t)),
            _ => smallvec![],
        },
        ToBoolean | ConvertsToBoolean => {
            let v = match single(&base, "toBoolean()")?.map(Item::prim) {
                None => return Ok(smallvec![]),
                Some(Prim::Bool(b)) => Some(b),
                Some(Prim::Int(i)) if i == 0 || i == 1 => Some(i == 1),
                Some(Prim::Dec(d)) if d == 0.0 || d == 1.0 => Some(d == 1.0),
                Some(Prim::Str(t)) => match t.to_ascii_lowercase().as_str() {
                    "true" | "t" | "yes" | "y" | "1" | "1.0" => Some(true),
                    "false" | "f" | "no" | "n" | "0" | "0.0" => Some(false),
                    _ => None,
                },
                Some(_) => None,
            };
            if func == ConvertsToBoolean { bool1(v.is_some()) } else { v.map(Item::Bool).into_iter().collect() }
        }
        ConvertsToString => match single(&base, "convertsToString()")?.map(Item::prim) {
            None => smallvec![],
            Some(Prim::Complex(_) | Prim::Null) => bool1(false),
            Some(_) => bool1(true),
        },
        ConvertsToDecimal => match single(&base, "convertsToDecimal()")?.map(Item::prim) {
            None => smallvec![],
            Some(Prim::Int(_) | Prim::Dec(_) | Prim::Bool(_)) => bool1(true),
            Some(Prim::Str(t)) => bool1(t.parse::<f64>().is_ok() && !t.contains(['e', 'E', 'i', 'n', 'N'])),
            Some(_) => bool1(false),
        },
        Abs | Ceiling | Floor | Round | Truncate | Sqrt | Exp | Ln | Log | Power => {
            let Some(x) = single(&base, "a math function")? else { return Ok(smallvec![]) };
            let arg = match args.first() {
                Some(a) => match single(&eval(a, input, s)?, "argument")?.map(Item::prim) {
                    Some(p) => number(&p),
                    None => return Ok(smallvec![]),
                },
                None => None,
            };
            let p = x.prim();
            let int = matches!(p, Prim::Int(_));
            let Some(n) = number(&p) else { return Err(eval_err("a math function on a value that is not a number")) };
            let r = match func {
                Abs if int => return Ok(smallvec![Item::Int((n as i64).abs())]),
                Abs => n.abs(),
                Ceiling => return Ok(smallvec![Item::Int(n.ceil() as i64)]),
                Floor => return Ok(smallvec![Item::Int(n.floor() as i64)]),
                Truncate => return Ok(smallvec![Item::Int(n.trunc() as i64)]),
                Round => {
                    let k = 10f64.powi(arg.unwrap_or(0.0) as i32);
                    (n * k).round() / k
                }
                Sqrt => n.sqrt(),
                Exp => n.exp(),
                Ln => n.ln(),
                Log => n.log(arg.unwrap_or(10.0)),
                _ if int && arg.is_some_and(|a| a.fract() == 0.0 && a >= 0.0) => {
                    return Ok(smallvec![Item::Int(n.powf(arg.unwrap_or(1.0)) as i64)]);
                }
                _ => n.powf(arg.unwrap_or(1.0)),
            };
            if r.is_finite() { smallvec![Item::Dec(r)] } else { smallvec![] }
        }
        AllTrue | AnyTrue | AllFalse | AnyFalse => {
            let bools: Vec<bool> = base.iter().map(|i| matches!(i.prim(), Prim::Bool(true))).collect();
            bool1(match func {
                AllTrue => bools.iter().all(|b| *b),
                AnyTrue => bools.iter().any(|b| *b),
                AllFalse => bools.iter().all(|b| !*b),
                _ => bools.iter().any(|b| !*b),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(expr: &str, v: &Value) -> Vec<String> {
        let e = parse(expr).unwrap_or_else(|err| panic!("{expr}: {err}"));
        let choices = &super::super::definitions::Definitions::shared().choice_names;
        let env = Env { resource: v, root: v, context: v, choices };
        evaluate(&e, v, None, env).unwrap_or_else(|err| panic!("{expr}: {err}")).iter().map(Item::to_text).collect()
    }

    fn patient() -> Value {
        json!({
            "resourceType": "Patient",
            "name": [{"given": ["Ann", "Bea"], "family": "Cole"}, {"family": "Dee"}],
            "birthDate": "1980-05-02",
            "_birthDate": {"extension": [{"url": "http://x", "valueString": "t"}]},
            "deceasedBoolean": false,
            "contact": [{"telecom": [{"system": "phone", "value": "1"}]}]
        })
    }

    #[test]
    fn paths_choices_twins_and_type_names() {
        let p = patient();
        assert_eq!(run("name.given", &p), ["Ann", "Bea"]);
        assert_eq!(run("Patient.name.family", &p), ["Cole", "Dee"]);
        assert_eq!(run("name[1].family", &p), ["Dee"]);
        assert_eq!(run("deceased is Boolean", &p), ["true"]);
        // `response` is not a choice element: it must not find `responseCode`.
        assert_eq!(run("response.exists()", &json!({"responseCode": "200"})), ["false"]);
        assert_eq!(run("deceased.ofType(dateTime).exists()", &p), ["false"]);
        assert_eq!(run("birthDate.extension('http://x').value", &p), ["t"]);
        assert_eq!(run("birthDate.hasValue() and name.hasValue().not()", &p), ["true"]);
        assert_eq!(run("is(Patient) and is(DomainResource)", &p), ["true"]);
        assert_eq!(run("children().count()", &p), ["5"]);
        assert_eq!(run("descendants().where($this = 'phone').count()", &p), ["1"]);
    }

    #[test]
    fn logic_is_three_valued_and_comparisons_respect_precision() {
        let p = patient();
        assert_eq!(run("gender.exists() or {}", &p), Vec::<String>::new());
        assert_eq!(run("true or {}", &p), ["true"]);
        assert_eq!(run("{} implies false", &p), Vec::<String>::new());
        assert_eq!(run("false implies {}", &p), ["true"]);
        assert_eq!(run("birthDate < @1980-05-03", &p), ["true"]);
        assert_eq!(run("birthDate <= @1980-05", &p), Vec::<String>::new());
        assert_eq!(run("@2024-03-14T10:15:00+01:00 < @2024-03-14T09:30:00Z", &p), ["true"]);
        assert_eq!(run("@2024-03-14T10:15:00+01:00 = @2024-03-14T09:15:00Z", &p), ["true"]);
        assert_eq!(run("name.family.isDistinct() and (name.family | name.family).count() = 2", &p), ["true"]);
        assert_eq!(run("'Cole' in name.family and name.family contains 'Dee'", &p), ["true"]);
        assert_eq!(run("2 + 3 * 4 - 10 div 3 = 11 and 7 mod 4 = 3", &p), ["true"]);
        assert_eq!(run("'#a1'.substring(1) & '-' + 'x'", &p), ["a1-x"]);
        assert_eq!(run("'abc'.matches('^[a-z]+$') and name.all(family.exists())", &p), ["true"]);
        assert_eq!(run("iif(name.count() > 1, 'many', 'one')", &p), ["many"]);
        assert_eq!(run("'12'.toInteger() >= 0 and '*'.toInteger().empty()", &p), ["true"]);
    }

    #[test]
    fn unknown_functions_are_unsupported_not_errors() {
        assert!(matches!(parse("subject.resolve().exists()"), Err(FhirPathError::Unsupported(_))));
        assert!(matches!(parse("code.memberOf('http://x')"), Err(FhirPathError::Unsupported(_))));
        assert!(matches!(parse("name.("), Err(FhirPathError::Syntax(..))));
    }

    #[test]
    fn every_r4_invariant_parses_or_is_declared_unsupported() {
        let defs = super::super::definitions::Definitions::shared();
        let mut syntax = Vec::new();
        for t in defs.types.values() {
            for e in &t.elements {
                for c in &e.constraints {
                    if let Err(FhirPathError::Syntax(at, m)) = parse(&c.expression) {
                        syntax.push(format!("{} {}: {m} at {at}", t.name, c.key));
                    }
                }
            }
        }
        assert!(syntax.is_empty(), "{syntax:#?}");
    }
}
