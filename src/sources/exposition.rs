//! The Prometheus text exposition format (0.0.4, and the OpenMetrics text
//! that most exporters also serve), read strictly: a body that Prometheus
//! would refuse is refused here too, with the line and what is wrong.
//!
//! Our own, after trying the crates: `openmetrics-parser` 0.4 refuses
//! HAProxy 2.6's own output (a counter without the `_total` suffix is valid
//! in this format), `prometheus-parse` 0.2 splits label values at `,` and
//! `=` and drops lines it cannot read without a word, and `nom-openmetrics`
//! 0.2 refuses sample timestamps and prints to stderr on `±Inf`.

/// One sample of the body.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The sample's name as written (`haproxy_frontend_http_requests_total`).
    pub name: String,
    /// Label pairs as written, in order.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Series {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The labels as one key (sorted), to follow a series across polls.
    pub fn key(&self) -> String {
        let mut l: Vec<_> = self.labels.iter().collect();
        l.sort();
        let mut out = String::new();
        for (k, v) in l {
            out.push_str(k);
            out.push('=');
            out.push_str(&v.replace('\\', "\\\\").replace(',', "\\,"));
            out.push(',');
        }
        out
    }
}

/// A body that does not parse: where and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

/// Every sample named `metric` in `body`, after checking every line of it.
pub fn parse(body: &str, metric: &str) -> Result<Vec<Series>, ParseError> {
    Ok(parse_many(body, &[metric])?.pop().unwrap_or_default())
}

/// The samples of each of `metrics` (in their order) in one read of `body`,
/// after checking every line of it.
pub fn parse_many(body: &str, metrics: &[&str]) -> Result<Vec<Vec<Series>>, ParseError> {
    let mut out: Vec<Vec<Series>> = vec![Vec::new(); metrics.len()];
    // the label names of one line, to refuse a label given twice
    let mut keys: Vec<&str> = Vec::new();
    for (i, raw) in body.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let err = |message: String| ParseError {
            line: i + 1,
            message,
        };
        let trimmed = blank(line);
        if trimmed.is_empty() {
            continue;
        }
        if let Some(comment) = trimmed.strip_prefix('#') {
            if comment.trim() == "EOF" {
                break;
            }
            check_descriptor(comment).map_err(err)?;
            continue;
        }
        // every line is checked; only the metric's samples are kept (the
        // others are read without copying anything)
        if let Some((i, s)) = sample(trimmed, metrics, &mut keys).map_err(err)? {
            // a metric asked for twice (two sources of one endpoint) gets it twice
            for (j, m) in metrics.iter().enumerate().skip(i + 1) {
                if *m == s.name {
                    out[j].push(s.clone());
                }
            }
            out[i].push(s);
        }
    }
    Ok(out)
}

fn check_descriptor(comment: &str) -> Result<(), String> {
    let mut words = fields(comment);
    match words.next() {
        Some("HELP") | Some("UNIT") => match words.next() {
            Some(name) if valid_name(name) => Ok(()),
            Some(name) => Err(format!("not a metric name: {name:?}")),
            None => Err("a HELP or UNIT line without a metric name".into()),
        },
        Some("TYPE") => {
            let name = words.next().ok_or("a TYPE line without a metric name")?;
            if !valid_name(name) {
                return Err(format!("not a metric name: {name:?}"));
            }
            match words.next() {
                Some(
                    "counter" | "gauge" | "histogram" | "summary" | "untyped" | "unknown"
                    | "gaugehistogram" | "stateset" | "info",
                ) => Ok(()),
                Some(t) => Err(format!("unknown metric type {t:?} for {name}")),
                None => Err(format!("a TYPE line without a type for {name}")),
            }
        }
        // any other comment is a comment
        _ => Ok(()),
    }
}

fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    matches!(b.first(), Some(c) if c.is_ascii_alphabetic() || *c == b'_' || *c == b':')
        && all_name_bytes(b)
}

/// Whether `c` may be in a metric name (`[a-zA-Z0-9_:]`), or with
/// `colon` false a label name (`[a-zA-Z0-9_]`): compares without branches,
/// so a sweep over a name is done a vector at a time.
const fn name_byte(c: u8, colon: bool) -> bool {
    let alpha = (c | 0x20).wrapping_sub(b'a') < 26;
    let digit = c.wrapping_sub(b'0') < 10;
    alpha | digit | (c == b'_') | (colon & (c == b':'))
}

/// Whether every byte of `b` is a metric-name byte, without stopping early.
fn all_name_bytes(b: &[u8]) -> bool {
    b.iter().fold(true, |ok, &c| ok & name_byte(c, true))
}

/// [`name_byte`] as tables, for the scans that stop at the first other byte.
const NAME: [bool; 256] = byte_class(true);
const LABEL: [bool; 256] = byte_class(false);

const fn byte_class(colon: bool) -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = name_byte(i as u8, colon);
        i += 1;
    }
    t
}

/// The length of the run of `class` bytes at the start of `b`.
fn run_of(b: &[u8], class: &[bool; 256]) -> usize {
    b.iter()
        .position(|c| !class[*c as usize])
        .unwrap_or(b.len())
}

/// The fields after a sample's name and labels (value, timestamp, an
/// exemplar's `#`), split at spaces and tabs as Prometheus' reader does.
fn fields(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = s;
    std::iter::from_fn(move || {
        rest = blank(rest);
        if rest.is_empty() {
            return None;
        }
        // a space or a tab is never part of a longer UTF-8 character
        let n = rest
            .as_bytes()
            .iter()
            .position(|b| matches!(b, b' ' | b'\t'))
            .unwrap_or(rest.len());
        let (word, after) = rest.split_at(n);
        rest = after;
        Some(word)
    })
}

/// `s` without the spaces and tabs it starts with.
fn blank(s: &str) -> &str {
    let n = s
        .as_bytes()
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count();
    &s[n..]
}

/// One sample line, checked; `Some` (with the index) when it is named one
/// of `metrics`.
fn sample<'a>(
    line: &'a str,
    metrics: &[&str],
    keys: &mut Vec<&'a str>,
) -> Result<Option<(usize, Series)>, String> {
    let b = line.as_bytes();
    // the name ends at labels or a blank; checked there in one sweep (the
    // byte-wise scan only finds where a bad byte is)
    let name_end = match memchr::memchr3(b'{', b' ', b'\t', b) {
        Some(e) if all_name_bytes(&b[..e]) => e,
        None if all_name_bytes(b) => b.len(),
        _ => run_of(b, &NAME),
    };
    let name = &line[..name_end];
    // every byte of it is a name byte already: only the first needs a look
    if name.is_empty() || name.as_bytes()[0].is_ascii_digit() {
        let shown: String = line.chars().take(40).collect();
        return Err(format!("expected a metric name at {shown:?}"));
    }
    let mut rest = &line[name_end..];
    let index = metrics.iter().position(|m| *m == name);
    let keep = index.is_some();
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        keys.clear();
        rest =
            label_set(r, keep.then_some(&mut labels), keys).map_err(|e| format!("{name}: {e}"))?;
    }
    if !matches!(rest.as_bytes().first(), Some(b' ' | b'\t')) {
        return Err(format!("{name}: expected a space before the value"));
    }
    let mut words = fields(rest);
    let text = words.next().ok_or_else(|| format!("{name}: no value"))?;
    // a value of a sample not kept is only checked, not converted
    let value = if keep {
        number(text)
    } else {
        is_number(text).then_some(0.0)
    }
    .ok_or_else(|| format!("{name}: {text:?} is not a number"))?;
    if let Some(ts) = words.next() {
        if ts != "#" {
            if number(ts).is_none_or(|t| !t.is_finite()) {
                return Err(format!("{name}: {ts:?} is not a timestamp"));
            }
            match words.next() {
                None | Some("#") => {}
                Some(extra) => {
                    return Err(format!("{name}: unexpected {extra:?} after the timestamp"))
                }
            }
        }
        // an OpenMetrics exemplar (`# {…} v`) follows: not used
    }
    Ok(index.map(|i| {
        (
            i,
            Series {
                name: name.to_string(),
                labels,
                value,
            },
        )
    }))
}

/// The labels after `{` (kept in `out` if given); returns what follows the
/// closing `}`.
fn label_set<'a>(
    mut s: &'a str,
    mut out: Option<&mut Vec<(String, String)>>,
    keys: &mut Vec<&'a str>,
) -> Result<&'a str, String> {
    loop {
        s = blank(s);
        if let Some(r) = s.strip_prefix('}') {
            return Ok(r);
        }
        let end = run_of(s.as_bytes(), &LABEL);
        if end == s.len() {
            return Err("labels without a closing '}'".into());
        }
        let key = &s[..end];
        // label-name bytes already: only the first needs a look
        if key.is_empty() || key.as_bytes()[0].is_ascii_digit() {
            let shown: String = s.chars().take(20).collect();
            return Err(format!("expected a label name at {shown:?}"));
        }
        s = blank(&s[end..]);
        s = blank(
            s.strip_prefix('=')
                .ok_or_else(|| format!("label {key}: expected '='"))?,
        );
        s = s
            .strip_prefix('"')
            .ok_or_else(|| format!("label {key}: expected a quoted value"))?;
        let keep = out.is_some();
        let mut value = String::new();
        let close = if keep {
            quoted_value(s, key, &mut value)?
        } else {
            // not kept: only checked, byte by byte (a quote or a backslash
            // is never part of a longer UTF-8 character)
            let b = s.as_bytes();
            let mut i = 0;
            loop {
                // straight to the next quote or backslash
                i += match memchr::memchr2(b'"', b'\\', &b[i..]) {
                    Some(k) => k,
                    None => return Err(format!("label {key}: the value has no closing quote")),
                };
                if b[i] == b'"' {
                    break i;
                }
                match b.get(i + 1) {
                    Some(b'\\' | b'"' | b'n') => i += 2,
                    Some(_) => {
                        let c = s[i + 1..].chars().next().unwrap_or('?');
                        return Err(format!("label {key}: unknown escape \\{c}"));
                    }
                    None => return Err(format!("label {key}: the value has no closing quote")),
                }
            }
        };
        if keys.contains(&key) {
            return Err(format!("label {key} given twice"));
        }
        keys.push(key);
        if let Some(out) = out.as_deref_mut() {
            out.push((key.to_string(), value));
        }
        s = blank(&s[close + 1..]);
        if let Some(r) = s.strip_prefix(',') {
            s = r;
        } else if !s.starts_with('}') {
            return Err(format!("after label {key}: expected ',' or '}}'"));
        }
    }
}

/// A kept label value after its opening quote, unescaped into `value`;
/// the index of the closing quote.
fn quoted_value(s: &str, key: &str, value: &mut String) -> Result<usize, String> {
    let mut chars = s.char_indices();
    loop {
        match chars.next() {
            None => return Err(format!("label {key}: the value has no closing quote")),
            Some((i, '"')) => return Ok(i),
            Some((_, '\\')) => match chars.next() {
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                Some((_, 'n')) => value.push('\n'),
                Some((_, c)) => return Err(format!("label {key}: unknown escape \\{c}")),
                None => return Err(format!("label {key}: the value has no closing quote")),
            },
            Some((_, c)) => value.push(c),
        }
    }
}

/// Whether [`number`] reads `s`, without converting it: a sign, digits
/// with at most one point (at least one digit), an exponent with digits;
/// or one of the names of NaN and the infinities.
fn is_number(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |from: usize| from + b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    let mut i = usize::from(matches!(b.first(), Some(b'+' | b'-')));
    let int_end = digits(i);
    let mut any = int_end > i;
    i = int_end;
    if b.get(i) == Some(&b'.') {
        let frac_end = digits(i + 1);
        any |= frac_end > i + 1;
        i = frac_end;
    }
    if any && matches!(b.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        let exp_end = digits(j);
        if exp_end == j {
            return false;
        }
        i = exp_end;
    }
    if any {
        return i == b.len();
    }
    number(s).is_some()
}

/// A value as Go's ParseFloat reads it for this format: decimals,
/// exponents, `NaN`, `+Inf`, `-Inf`.
fn number(s: &str) -> Option<f64> {
    let ok = s
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
        || matches!(
            s.to_ascii_lowercase().as_str(),
            "nan" | "inf" | "+inf" | "-inf" | "infinity" | "+infinity" | "-infinity"
        );
    if !ok {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_haproxy_output() {
        let body = "# HELP haproxy_frontend_http_requests_total Total number of HTTP requests\n\
# TYPE haproxy_frontend_http_requests_total counter\n\
haproxy_frontend_http_requests_total{proxy=\"stats\"} 1\n\
haproxy_frontend_http_requests_total{proxy=\"web\"} 3\n\
# TYPE haproxy_process_failed_resolutions counter\n\
haproxy_process_failed_resolutions 0\n";
        let s = parse(body, "haproxy_frontend_http_requests_total").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].label("proxy"), Some("web"));
        assert_eq!(s[1].value, 3.0);
        assert_eq!(
            parse(body, "haproxy_process_failed_resolutions").unwrap()[0].value,
            0.0
        );
    }

    /// What Debian's HAProxy 2.6 serves (`prometheus-exporter`), whole.
    #[test]
    fn reads_a_real_haproxy_body() {
        let body = include_str!("../../fixtures/haproxy-2.6-metrics.txt");
        let s = parse(body, "haproxy_frontend_http_requests_total").unwrap();
        assert!(s.iter().any(|s| s.label("proxy") == Some("web")));
        let servers = parse(body, "haproxy_server_current_sessions").unwrap();
        assert!(servers.iter().any(|s| s.label("server") == Some("vm1")));
    }

    #[test]
    fn label_values_keep_commas_equals_and_escapes() {
        let body = "x{a=\"b,c\",d=\"e=f\",g=\"say \\\"hi\\\"\\n\\\\\",} 2 1395066363000\n";
        let s = parse(body, "x").unwrap();
        assert_eq!(
            s[0].labels,
            vec![
                ("a".into(), "b,c".into()),
                ("d".into(), "e=f".into()),
                ("g".into(), "say \"hi\"\n\\".into())
            ]
        );
        assert_eq!(s[0].value, 2.0);
    }

    #[test]
    fn special_values_and_openmetrics_text() {
        let body = "# TYPE a gauge\na NaN\nb +Inf\nc -Inf\nd 1.5e3 # {trace_id=\"x\"} 1\n# EOF\n";
        assert!(parse(body, "a").unwrap()[0].value.is_nan());
        assert_eq!(parse(body, "b").unwrap()[0].value, f64::INFINITY);
        assert_eq!(parse(body, "c").unwrap()[0].value, f64::NEG_INFINITY);
        assert_eq!(parse(body, "d").unwrap()[0].value, 1500.0);
        // what follows # EOF is not read
        assert!(parse("a 1\n# EOF\ngarbage", "a").is_ok());
    }

    #[test]
    fn bad_lines_are_named_by_number() {
        for (body, line, what) in [
            ("ok 1\n{A}0\n", 2, "metric name"),
            ("x{a=\"1\" 2\n", 1, "expected ','"),
            ("x{a=1} 2\n", 1, "quoted value"),
            ("x{a=\"1\"}2\n", 1, "space before the value"),
            ("x 1 2 3\n", 1, "unexpected"),
            ("x one\n", 1, "not a number"),
            ("x 0x10\n", 1, "not a number"),
            ("x\n", 1, "space before the value"),
            ("x \n", 1, "no value"),
            ("# TYPE x countr\n", 1, "unknown metric type"),
            ("x{a=\"\\q\"} 1\n", 1, "unknown escape"),
            ("x{a=\"1\",a=\"2\"} 1\n", 1, "twice"),
            ("\n\nx{a=\"open} 1\n", 3, "closing quote"),
        ] {
            let e = parse(body, "x").unwrap_err();
            assert_eq!(e.line, line, "{body:?}: {e}");
            assert!(e.message.contains(what), "{body:?}: {e}");
        }
    }

    #[test]
    fn several_metrics_in_one_read_each_as_often_as_asked() {
        let body = "a 1\nb{x=\"1\"} 2\nb{x=\"2\"} 3\nc 4\n";
        let r = parse_many(body, &["b", "a", "b", "zz"]).unwrap();
        assert_eq!(r.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 1, 2, 0]);
        assert_eq!(r[2][1].value, 3.0);
    }

    /// A line of another metric is checked as strictly, only not copied.
    #[test]
    fn other_metrics_lines_are_checked_too() {
        for (body, what) in [
            ("x 1\ny{a=\"1\",a=\"2\"} 1\n", "twice"),
            ("x 1\ny{a=\"\\q\"} 1\n", "unknown escape"),
            ("x 1\ny{a=\"1} 1\n", "closing quote"),
            ("x 1\ny one\n", "not a number"),
        ] {
            let e = parse(body, "x").unwrap_err();
            assert_eq!(e.line, 2, "{body:?}");
            assert!(e.message.contains(what), "{body:?}: {e}");
        }
        assert_eq!(parse("x 1\ny{a=\"q\\\"\"} 2\n", "x").unwrap().len(), 1);
    }

    /// The branch-free test is exactly the format's name bytes.
    #[test]
    fn name_bytes_are_the_formats() {
        for c in 0..=255u8 {
            let label = c.is_ascii_alphanumeric() || c == b'_';
            assert_eq!(name_byte(c, false), label, "{c}");
            assert_eq!(name_byte(c, true), label || c == b':', "{c}");
            assert_eq!(NAME[c as usize], name_byte(c, true));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
        /// The check a value not kept gets accepts exactly what the
        /// conversion of a kept one reads.
        #[test]
        fn checking_a_number_agrees_with_reading_it(s in "[-+0-9.eEinfatyINFATY]{0,8}") {
            proptest::prop_assert_eq!(is_number(&s), number(&s).is_some(), "{:?}", s);
        }

        /// A line is refused as another metric's exactly when it is
        /// refused as the one asked for (the two paths read it apart).
        #[test]
        fn a_line_not_kept_is_checked_as_a_kept_one(
            line in "x(\\{[a-z_\"\\\\=, ]{0,12}\\})?[ \t]{0,2}[-+0-9.eE# NaIf]{0,10}"
        ) {
            let kept = parse(&line, "x").map(|_| ());
            let other = parse(&line, "y").map(|_| ());
            proptest::prop_assert_eq!(kept, other, "{:?}", line);
        }

        /// Any bytes at all: an answer, never a panic.
        #[test]
        fn never_panics_on_anything(body in "\\PC{0,200}") {
            let _ = parse(&body, "x");
        }

        /// Valid bodies cut or bent at any place: an answer, never a panic.
        #[test]
        fn never_panics_on_damaged_bodies(cut in 0usize..200, ch in proptest::char::any()) {
            let good = "# HELP x h\n# TYPE x counter\nx{a=\"1\",b=\"q\\\"\"} 12.5 1700000000000\nx_total 3\n";
            let mut s: String = good.chars().take(cut).collect();
            s.push(ch);
            s.extend(good.chars().skip(cut + 1));
            let _ = parse(&s, "x");
        }

        /// A sample written with any label value reads back exactly.
        #[test]
        fn label_values_round_trip(v in "\\PC{0,30}", n in -1e12f64..1e12) {
            let esc = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            let body = format!("x{{l=\"{esc}\"}} {n}\n");
            let s = parse(&body, "x").unwrap();
            proptest::prop_assert_eq!(s[0].label("l"), Some(v.as_str()));
            proptest::prop_assert_eq!(s[0].value, n);
        }
    }
}
