//! Just enough CSV (RFC 4180) for `residents import`: comma-separated fields, fields in double
//! quotes may hold commas, newlines and doubled quotes (`""`). Each record remembers the line
//! it starts on, so a bad row is reported where a spreadsheet user will look for it.

/// One record: its 1-based starting line and its fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub line: usize,
    pub fields: Vec<String>,
}

/// Splits `text` into records. Blank lines are skipped; a UTF-8 byte-order mark is ignored.
/// The only error is a quote left open, reported with the line it was opened on.
pub fn records(text: &str) -> Result<Vec<Record>, (usize, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut line = 1usize;
    let mut start = 1usize;
    // A quoted field is open since this line.
    let mut quoted: Option<usize> = None;
    // The current field began with a quote (so `"a"b` keeps the b, as spreadsheets do).
    let mut chars = text.chars().peekable();
    let mut at_field_start = true;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (Some(_), '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (Some(_), '"') => quoted = None,
            (Some(_), '\n') => {
                line += 1;
                field.push('\n');
            }
            (Some(_), c) => field.push(c),
            (None, '"') if at_field_start => {
                quoted = Some(line);
                at_field_start = false;
                continue;
            }
            (None, ',') => {
                fields.push(std::mem::take(&mut field));
                at_field_start = true;
                continue;
            }
            (None, '\r') if chars.peek() == Some(&'\n') => {}
            (None, '\n') => {
                fields.push(std::mem::take(&mut field));
                finish(&mut out, start, std::mem::take(&mut fields));
                line += 1;
                start = line;
                at_field_start = true;
                continue;
            }
            (None, c) => field.push(c),
        }
        at_field_start = false;
    }
    if let Some(opened) = quoted {
        return Err((
            opened,
            "a quoted field is never closed (a \" is missing)".into(),
        ));
    }
    if !field.is_empty() || !fields.is_empty() {
        fields.push(field);
        finish(&mut out, start, fields);
    }
    Ok(out)
}

fn finish(out: &mut Vec<Record>, line: usize, fields: Vec<String>) {
    let blank = fields.iter().all(|f| f.trim().is_empty());
    if !blank {
        out.push(Record { line, fields });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(line: usize, fields: &[&str]) -> Record {
        Record {
            line,
            fields: fields.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn plain_quoted_and_multiline_fields() {
        let text = "id,name,notes\r\nr-1,Wang,\"diabetic, uses a cane\"\n\nr-2,\"Li \"\"Lao\"\" Si\",\"line one\nline two\"\nr-3,Zhao,\n";
        let got = records(text).expect("valid CSV");
        assert_eq!(
            got,
            vec![
                rec(1, &["id", "name", "notes"]),
                rec(2, &["r-1", "Wang", "diabetic, uses a cane"]),
                rec(4, &["r-2", "Li \"Lao\" Si", "line one\nline two"]),
                rec(6, &["r-3", "Zhao", ""]),
            ]
        );
    }

    #[test]
    fn last_line_without_newline_and_bom() {
        let got = records("\u{feff}a,b\n1,2").expect("valid CSV");
        assert_eq!(got, vec![rec(1, &["a", "b"]), rec(2, &["1", "2"])]);
    }

    #[test]
    fn an_open_quote_names_its_line() {
        let err = records("a,b\n1,2\n3,\"oops\n4,5\n").unwrap_err();
        assert_eq!(err.0, 3);
        assert!(err.1.contains("never closed"), "{}", err.1);
    }
}
