//! Pure parts of paging: reading a page of a UEM list, choosing the output by `Accept`, and
//! writing items as NDJSON, one streamed JSON document, or CSV.

use std::collections::HashMap;

use serde_json::Value;
use serde_json::value::RawValue;

/// One page of a list, as UEM answers it: `{"Devices": [...], "Page": 0, "PageSize": 500,
/// "Total": 1234}`, the names in any letter case.
#[derive(Debug)]
pub struct Page {
    /// The name of the response's one top-level array (`None` when the answer is a bare array).
    pub key: Option<String>,
    /// The items as the API wrote them: split out, never parsed into trees (most answers are
    /// passed on byte for byte).
    pub items: Vec<Box<RawValue>>,
    pub total: Option<u64>,
    pub page_size: Option<u64>,
}

/// Reads a page; `Err` says why the answer is not one.
pub fn page(body: &[u8]) -> Result<Page, &'static str> {
    let list = |raw: &RawValue| serde_json::from_str::<Vec<Box<RawValue>>>(raw.get());
    if body.trim_ascii_start().starts_with(b"[") {
        let items = serde_json::from_slice(body).map_err(|_| "a page is not JSON")?;
        return Ok(Page { key: None, items, total: None, page_size: None });
    }
    let object: HashMap<String, Box<RawValue>> =
        serde_json::from_slice(body).map_err(|_| "a page is neither a JSON object nor a list")?;
    let number = |name: &str| {
        let found = object.iter().find(|(k, _)| k.eq_ignore_ascii_case(name));
        found.and_then(|(_, v)| v.get().trim().parse::<u64>().ok())
    };
    let (total, page_size) = (number("total"), number("pagesize"));
    let mut lists = object.iter().filter(|(_, v)| v.get().trim_start().starts_with('['));
    let (key, items) = match (lists.next(), lists.next()) {
        (Some((key, raw)), None) => (key.clone(), list(raw).map_err(|_| "a page's list is not JSON")?),
        (None, _) => return Err("a page holds no list"),
        _ => return Err("a page holds more than one list"),
    };
    Ok(Page { key: Some(key), items, total, page_size })
}

/// The output format the caller asked for with `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ndjson,
    Json,
    Csv,
}

impl Format {
    /// The first media range of `accept` that names one of the formats; NDJSON otherwise.
    pub fn of(accept: Option<&str>) -> Format {
        for range in accept.unwrap_or("").split(',') {
            let media = range.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            match media.as_str() {
                "application/x-ndjson" | "application/ndjson" => return Format::Ndjson,
                "application/json" => return Format::Json,
                "text/csv" => return Format::Csv,
                _ => {}
            }
        }
        Format::Ndjson
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Ndjson => "application/x-ndjson",
            Format::Json => "application/json; charset=utf-8",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }
}

/// Writes items in one format, page by page.
pub struct Writer {
    format: Format,
    /// CSV: the first page's dotted names.
    columns: Vec<String>,
    /// JSON: the list's key, and whether an item was written yet.
    key: String,
    written: u64,
}

impl Writer {
    /// A writer whose shape (CSV columns, JSON key) comes from the first page.
    pub fn new(format: Format, first: &Page) -> Writer {
        let mut columns = Vec::new();
        if format == Format::Csv {
            for item in &first.items {
                let mut names = Vec::new();
                flatten_names(&tree(item), "", &mut names);
                for name in names {
                    if !columns.contains(&name) {
                        columns.push(name);
                    }
                }
            }
        }
        let key = first.key.clone().unwrap_or_else(|| "Items".to_owned());
        Writer { format, columns, key, written: 0 }
    }

    /// What comes before the first item.
    pub fn start(&self) -> Vec<u8> {
        match self.format {
            Format::Ndjson => Vec::new(),
            Format::Json => format!("{{{}:[", Value::String(self.key.clone())).into_bytes(),
            Format::Csv => {
                let mut out = Vec::new();
                let names: Vec<&str> = self.columns.iter().map(String::as_str).collect();
                csv_row(&names, &mut out);
                out
            }
        }
    }

    /// A page's items.
    pub fn items(&mut self, items: &[Box<RawValue>], out: &mut Vec<u8>) {
        for item in items {
            match self.format {
                Format::Ndjson => {
                    compact(item, out);
                    out.push(b'\n');
                }
                Format::Json => {
                    if self.written > 0 {
                        out.push(b',');
                    }
                    compact(item, out);
                }
                Format::Csv => {
                    let item = tree(item);
                    let cells: Vec<String> = self.columns.iter().map(|c| cell(&item, c)).collect();
                    let cells: Vec<&str> = cells.iter().map(String::as_str).collect();
                    csv_row(&cells, out);
                }
            }
            self.written += 1;
        }
    }

    /// What comes after the last item; `total`: page 0's `Total`, else the items written.
    pub fn end(&self, total: Option<u64>) -> Vec<u8> {
        match self.format {
            Format::Json => format!("],\"Total\":{}}}", total.unwrap_or(self.written)).into_bytes(),
            Format::Ndjson | Format::Csv => Vec::new(),
        }
    }
}

/// An item on one line: as the API wrote it when it is (UEM writes compact JSON), else written
/// again compactly.
fn compact(item: &RawValue, out: &mut Vec<u8>) {
    let text = item.get();
    if text.contains(['\n', '\r']) {
        serde_json::to_writer(&mut *out, &tree(item)).expect("writing to a Vec");
    } else {
        out.extend_from_slice(text.as_bytes());
    }
}

/// An item parsed, for CSV; it was valid JSON when it was split out.
fn tree(item: &RawValue) -> Value {
    serde_json::from_str(item.get()).unwrap_or(Value::Null)
}

/// Dotted names of an item's scalar and array fields, nested objects opened (`Id.Value`).
fn flatten_names(value: &Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                match v {
                    Value::Object(inner) if !inner.is_empty() => flatten_names(v, &name, out),
                    _ => out.push(name),
                }
            }
        }
        _ if prefix.is_empty() => out.push("Value".to_owned()),
        _ => out.push(prefix.to_owned()),
    }
}

/// The text of one dotted field of an item: strings as they are, arrays and objects as JSON
/// text, null or absent as empty.
fn cell(item: &Value, column: &str) -> String {
    let mut value = item;
    if item.is_object() {
        for part in column.split('.') {
            match value.get(part) {
                Some(v) => value = v,
                None => return String::new(),
            }
        }
    }
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One CSV row (RFC 4180): cells holding a comma, quote or line break quoted, quotes doubled.
fn csv_row(cells: &[&str], out: &mut Vec<u8>) {
    for (i, cell) in cells.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if cell.contains([',', '"', '\n', '\r']) {
            out.push(b'"');
            out.extend_from_slice(cell.replace('"', "\"\"").as_bytes());
            out.push(b'"');
        } else {
            out.extend_from_slice(cell.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// The query with `page` and `pagesize` (any letter case) set to these values, every other
/// parameter kept byte for byte; and the values the caller gave, if numbers.
pub fn with_page(query: Option<&str>, page: u64, size: u64) -> String {
    let mut out: Vec<String> =
        query.unwrap_or("").split('&').filter(|p| !p.is_empty() && !is_paging(p)).map(str::to_owned).collect();
    out.push(format!("page={page}"));
    out.push(format!("pagesize={size}"));
    out.join("&")
}

/// The caller's `page` and `pagesize`, when given. `Err` names one that is not a number.
pub fn paging(query: Option<&str>) -> Result<(Option<u64>, Option<u64>), &'static str> {
    let (mut page, mut size) = (None, None);
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if name.eq_ignore_ascii_case("page") {
            page = Some(value.trim().parse().map_err(|_| "page is not a whole number")?);
        } else if name.eq_ignore_ascii_case("pagesize") {
            size = Some(value.trim().parse().map_err(|_| "pagesize is not a whole number")?).filter(|n| *n > 0);
        }
    }
    Ok((page, size))
}

fn is_paging(param: &str) -> bool {
    let name = param.split('=').next().unwrap_or("");
    name.eq_ignore_ascii_case("page") || name.eq_ignore_ascii_case("pagesize")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_page_is_its_one_list_with_names_in_any_case() {
        let p = page(br#"{"Devices":[{"Id":1}],"page":0,"PAGESIZE":500,"total":1}"#).unwrap();
        assert_eq!(p.key.as_deref(), Some("Devices"));
        assert_eq!((p.items.len(), p.total, p.page_size), (1, Some(1), Some(500)));
        assert!(page(br#"{"A":[],"B":[]}"#).is_err());
        assert!(page(br#"{"Total":3}"#).is_err());
        assert!(page(b"<xml/>").is_err());
        assert_eq!(page(b"[1,2]").unwrap().items.len(), 2);
        // An item written over several lines is one NDJSON line.
        let p = page(b"{\"L\": [ {\"a\":\n 1} ]}").unwrap();
        let mut w = Writer::new(Format::Ndjson, &p);
        let mut out = Vec::new();
        w.items(&p.items, &mut out);
        assert_eq!(out, b"{\"a\":1}\n");
    }

    #[test]
    fn accept_picks_the_format() {
        assert_eq!(Format::of(None), Format::Ndjson);
        assert_eq!(Format::of(Some("*/*")), Format::Ndjson);
        assert_eq!(Format::of(Some("text/csv")), Format::Csv);
        assert_eq!(Format::of(Some("application/json;version=2")), Format::Json);
        assert_eq!(Format::of(Some("text/html, text/csv;q=0.9")), Format::Csv);
    }

    fn raw(values: &[Value]) -> Vec<Box<RawValue>> {
        values.iter().map(|v| RawValue::from_string(v.to_string()).unwrap()).collect()
    }

    #[test]
    fn csv_opens_objects_into_dotted_columns() {
        let first = Page {
            key: Some("Devices".into()),
            items: raw(&[
                json!({"Id": {"Value": 1}, "Name": "a,b", "Tags": ["x"]}),
                json!({"Id": {"Value": 2}, "Name": "say \"hi\"", "Extra": null}),
            ]),
            total: Some(2),
            page_size: None,
        };
        let mut w = Writer::new(Format::Csv, &first);
        let mut out = w.start();
        w.items(&first.items, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Id.Value,Name,Tags,Extra\r\n1,\"a,b\",\"[\"\"x\"\"]\",\r\n2,\"say \"\"hi\"\"\",,\r\n"
        );
    }

    #[test]
    fn json_is_one_document_with_the_lists_key() {
        let first =
            Page { key: Some("Users".into()), items: raw(&[json!({"a": 1}), json!(2)]), total: None, page_size: None };
        let mut w = Writer::new(Format::Json, &first);
        let mut out = w.start();
        w.items(&first.items, &mut out);
        w.items(&raw(&[json!(3)]), &mut out);
        out.extend(w.end(None));
        let doc: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(doc, json!({"Users": [{"a": 1}, 2, 3], "Total": 3}));
    }

    #[test]
    fn paging_parameters_are_replaced_and_others_kept() {
        assert_eq!(
            with_page(Some("platform=Android&Page=3&PageSize=10&x=%2F"), 4, 10),
            "platform=Android&x=%2F&page=4&pagesize=10"
        );
        assert_eq!(with_page(None, 0, 500), "page=0&pagesize=500");
        assert_eq!(paging(Some("PAGE=2&pagesize=100")), Ok((Some(2), Some(100))));
        assert!(paging(Some("page=-1")).is_err());
    }
}
