//! `residents import FILE`: CSV (with a header) or TOML (`[[resident]]` tables) in, validated
//! residents out — or every problem, each with its file and line. Nothing is written unless
//! the whole file is good (the caller writes all residents in one transaction).

use super::csv;
use crate::rules::AttrValue;
use crate::store::{Contact, Location, Resident};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Most contacts a CSV row can carry (`contact1_*` .. `contact10_*`).
const MAX_CONTACTS: usize = 10;

/// Read and check `path`: `.csv` or `.toml` by extension.
pub fn read_file(path: &Path) -> Result<Vec<Resident>, Vec<String>> {
    let label = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| vec![format!("{label}: cannot read: {e}")])?;
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("csv") => parse_csv(&label, &text),
        Some("toml") => parse_toml(&label, &text),
        _ => Err(vec![format!(
            "{label}: the file name must end in .csv or .toml"
        )]),
    }
}

/// The place of a record and what it says about itself, for error lines.
fn place(file: &str, line: usize, id: &str) -> String {
    if id.is_empty() {
        format!("{file}:{line}")
    } else {
        format!("{file}:{line}: resident {id}")
    }
}

/// One record read from the file: its line, the resident if one could be built, and the
/// problems found while reading it (already placed).
type Row = (usize, Option<Resident>, Vec<String>);

/// Checks each resident and that no id appears twice; returns them or every problem.
fn finish(file: &str, rows: Vec<Row>) -> Result<Vec<Resident>, Vec<String>> {
    let mut errors = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (line, resident, problems) in rows {
        errors.extend(problems);
        if let Some(r) = resident {
            let at = place(file, line, &r.id);
            for p in r.problems() {
                errors.push(format!("{at}: {p}"));
            }
            if let Some(first) = seen.insert(r.id.clone(), line) {
                errors.push(format!("{at}: the same id is already on line {first}"));
            }
            out.push(r);
        }
    }
    if out.is_empty() && errors.is_empty() {
        errors.push(format!("{file}: no residents in the file"));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// A CSV column, understood.
#[derive(Debug, Clone, PartialEq)]
enum Column {
    Id,
    Name,
    Phone,
    Address,
    Lat,
    Lon,
    Notes,
    PreferredHospital,
    TimeZone,
    /// `contactN_name|phone|relation`, N from 1.
    Contact(usize, ContactField),
    /// `attr.NAME`.
    Attr(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ContactField {
    Name,
    Phone,
    Relation,
}

fn column(name: &str) -> Option<Column> {
    let name = name.trim();
    Some(match name {
        "id" => Column::Id,
        "name" => Column::Name,
        "phone" => Column::Phone,
        "address" => Column::Address,
        "lat" => Column::Lat,
        "lon" => Column::Lon,
        "notes" => Column::Notes,
        "preferred_hospital" => Column::PreferredHospital,
        "time_zone" => Column::TimeZone,
        _ => {
            if let Some(attr) = name.strip_prefix("attr.") {
                return (!attr.is_empty()).then(|| Column::Attr(attr.to_owned()));
            }
            let rest = name.strip_prefix("contact")?;
            let (n, field) = rest.split_once('_')?;
            let n: usize = n.parse().ok().filter(|n| (1..=MAX_CONTACTS).contains(n))?;
            let field = match field {
                "name" => ContactField::Name,
                "phone" => ContactField::Phone,
                "relation" => ContactField::Relation,
                _ => return None,
            };
            Column::Contact(n, field)
        }
    })
}

/// An attribute cell: `true`/`false`, an integer, or text.
fn attr_value(cell: &str) -> AttrValue {
    match cell {
        "true" => AttrValue::Bool(true),
        "false" => AttrValue::Bool(false),
        _ => match cell.parse::<i64>() {
            Ok(i) => AttrValue::Int(i),
            Err(_) => AttrValue::Text(cell.to_owned()),
        },
    }
}

/// CSV with a header row; see the README for the columns.
pub fn parse_csv(file: &str, text: &str) -> Result<Vec<Resident>, Vec<String>> {
    let records =
        csv::records(text).map_err(|(line, why)| vec![format!("{file}:{line}: {why}")])?;
    let mut records = records.into_iter();
    let Some(header) = records.next() else {
        return Err(vec![format!(
            "{file}: the file is empty (expected a header row: id,name,...)"
        )]);
    };
    let mut columns = Vec::new();
    let mut header_errors = Vec::new();
    for name in &header.fields {
        match column(name) {
            Some(c) if columns.contains(&c) => {
                header_errors.push(format!("{file}:{}: column {:?} appears twice", header.line, name.trim()))
            }
            Some(c) => columns.push(c),
            None => header_errors.push(format!(
                "{file}:{}: unknown column {:?} (expected id, name, phone, address, lat, lon, notes, preferred_hospital, time_zone, contactN_name, contactN_phone, contactN_relation, attr.NAME)",
                header.line,
                name.trim()
            )),
        }
    }
    for required in [Column::Id, Column::Name] {
        if !columns.contains(&required) {
            header_errors.push(format!(
                "{file}:{}: the header has no {:?} column",
                header.line,
                format!("{required:?}").to_lowercase()
            ));
        }
    }
    if !header_errors.is_empty() {
        return Err(header_errors);
    }
    let rows = records
        .map(|rec| {
            let (resident, problems) = csv_row(file, &columns, &rec);
            (rec.line, Some(resident), problems)
        })
        .collect();
    finish(file, rows)
}

fn csv_row(file: &str, columns: &[Column], rec: &csv::Record) -> (Resident, Vec<String>) {
    let cell = |c: &Column| -> Option<String> {
        let i = columns.iter().position(|x| x == c)?;
        rec.fields
            .get(i)
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let id = cell(&Column::Id).unwrap_or_default();
    let at = place(file, rec.line, &id);
    let mut problems = Vec::new();
    if rec.fields.len() != columns.len() {
        problems.push(format!(
            "{at}: the row has {} fields, the header has {}",
            rec.fields.len(),
            columns.len()
        ));
    }
    let coord = |c: &Column, what: &str, problems: &mut Vec<String>| -> Option<f64> {
        let v = cell(c)?;
        match v.parse::<f64>() {
            Ok(x) => Some(x),
            Err(_) => {
                problems.push(format!("{at}: {what} {v:?} is not a number"));
                None
            }
        }
    };
    let lat = coord(&Column::Lat, "lat", &mut problems);
    let lon = coord(&Column::Lon, "lon", &mut problems);
    let location = match (
        lat,
        lon,
        cell(&Column::Lat).is_some(),
        cell(&Column::Lon).is_some(),
    ) {
        (Some(lat), Some(lon), _, _) => Some(Location { lat, lon }),
        (_, _, true, false) | (_, _, false, true) => {
            problems.push(format!("{at}: give both lat and lon, or neither"));
            None
        }
        _ => None,
    };
    let mut contacts = Vec::new();
    for n in 1..=MAX_CONTACTS {
        let f = |field| cell(&Column::Contact(n, field));
        let (name, phone, relation) = (
            f(ContactField::Name),
            f(ContactField::Phone),
            f(ContactField::Relation),
        );
        if name.is_some() || phone.is_some() || relation.is_some() {
            contacts.push(Contact {
                name: name.unwrap_or_default(),
                phone: phone.unwrap_or_default(),
                relation,
            });
        }
    }
    let mut attributes = BTreeMap::new();
    for c in columns {
        if let Column::Attr(name) = c {
            if let Some(v) = cell(c) {
                attributes.insert(name.clone(), attr_value(&v));
            }
        }
    }
    let resident = Resident {
        id,
        name: cell(&Column::Name).unwrap_or_default(),
        phone: cell(&Column::Phone),
        address: cell(&Column::Address),
        location,
        notes: cell(&Column::Notes),
        contacts,
        preferred_hospital: cell(&Column::PreferredHospital),
        attributes,
        time_zone: cell(&Column::TimeZone),
    };
    (resident, problems)
}

/// The file: `[[resident]]` tables and nothing else.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlFile {
    #[serde(default)]
    resident: Vec<toml::Spanned<toml::Table>>,
}

/// TOML: one `[[resident]]` table per resident, keys as in [`Resident`].
pub fn parse_toml(file: &str, text: &str) -> Result<Vec<Resident>, Vec<String>> {
    let parsed: TomlFile = toml::from_str(text).map_err(|e| {
        let at = e.span().map(|s| crate::config::line_col(text, s.start));
        let msg = e.message().trim_end().to_owned();
        vec![match at {
            Some((line, col)) => format!("{file}:{line}:{col}: {msg}"),
            None => format!("{file}: {msg}"),
        }]
    })?;
    let rows = parsed
        .resident
        .into_iter()
        .map(|table| {
            let line = crate::config::line_col(text, table.span().start).0;
            let table = table.into_inner();
            let id = table.get("id").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
            let at = place(file, line, &id);
            let mut problems = Vec::new();
            if let Some(attrs) = table.get("attributes").and_then(|a| a.as_table()) {
                for (name, v) in attrs {
                    if !matches!(v, toml::Value::Boolean(_) | toml::Value::Integer(_) | toml::Value::String(_)) {
                        problems.push(format!(
                            "{at}: attribute {name} must be a boolean, an integer or a string, not {}",
                            v.type_str()
                        ));
                    }
                }
            }
            let mut table = table;
            let owner = format!("resident {}", if id.is_empty() { "?" } else { &id });
            problems.extend(
                contact_problems(&table, &owner)
                    .into_iter()
                    .map(|p| format!("{file}:{line}: {p}")),
            );
            if !problems.is_empty() {
                // Every other problem of the record too (what is reported already set aside).
                table.remove("contacts");
                table.remove("attributes");
                let more = match Resident::deserialize(toml::Value::Table(table)) {
                    Ok(r) => r.problems().into_iter().map(|p| format!("{at}: {p}")).collect(),
                    Err(e) => vec![format!("{at}: {}", e.message().trim_end())],
                };
                problems.extend(more);
                return (line, None, problems);
            }
            match Resident::deserialize(toml::Value::Table(table)) {
                Ok(r) => (line, Some(r), problems),
                Err(e) => (line, None, vec![format!("{at}: {}", e.message().trim_end())]),
            }
        })
        .collect();
    finish(file, rows)
}

/// What is wrong with a TOML resident's `contacts`, each as `contact N of OWNER: what`: a
/// contact that is not a table, a missing or non-text name or phone, a key that is not a
/// contact's. Every one, not the first.
fn contact_problems(table: &toml::Table, owner: &str) -> Vec<String> {
    let Some(contacts) = table.get("contacts") else {
        return Vec::new();
    };
    let Some(list) = contacts.as_array() else {
        return vec![format!(
            "contacts of {owner} must be a list of tables, not {}",
            contacts.type_str()
        )];
    };
    let mut out = Vec::new();
    for (i, c) in list.iter().enumerate() {
        let n = format!("contact {} of {owner}", i + 1);
        let Some(c) = c.as_table() else {
            out.push(format!("{n}: must be a table {{ name, phone, relation }}"));
            continue;
        };
        for field in ["name", "phone"] {
            match c.get(field) {
                None => out.push(format!("{n}: missing {field}")),
                Some(v) if !v.is_str() => {
                    out.push(format!("{n}: {field} must be text, not {}", v.type_str()))
                }
                Some(_) => {}
            }
        }
        if let Some(v) = c.get("relation").filter(|v| !v.is_str()) {
            out.push(format!("{n}: relation must be text, not {}", v.type_str()));
        }
        for k in c
            .keys()
            .filter(|k| !["name", "phone", "relation"].contains(&k.as_str()))
        {
            out.push(format!(
                "{n}: unknown key {k:?} (expected name, phone, relation)"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "id,name,phone,address,lat,lon,notes,preferred_hospital,time_zone,contact1_name,contact1_phone,contact1_relation,contact2_name,contact2_phone,attr.lives_alone,attr.mobility,attr.floor\n";

    #[test]
    fn csv_rows_become_residents() {
        let text = format!(
            "{HEADER}r-1001,Wang Xiuying,+86 138 0000 0001,\"Room 302, 18 Lane 100, Xuhui\",31.19,121.44,\"diabetic; key with neighbour\",Zhongshan Hospital,,Wang Li,+86 139 0000 0002,daughter,Zhao Min,021 5555 0101,true,wheelchair,3\nr-1002,Li Hua,,,,,,,America/New_York,,,,,,false,,\n"
        );
        let got = parse_csv("r.csv", &text).expect("valid");
        assert_eq!(got.len(), 2);
        let w = &got[0];
        assert_eq!(w.id, "r-1001");
        assert_eq!(w.address.as_deref(), Some("Room 302, 18 Lane 100, Xuhui"));
        assert_eq!(
            w.location,
            Some(Location {
                lat: 31.19,
                lon: 121.44
            })
        );
        assert_eq!(w.time_zone, None);
        assert_eq!(w.contacts.len(), 2);
        assert_eq!(w.contacts[0].relation.as_deref(), Some("daughter"));
        assert_eq!(w.contacts[1].relation, None);
        assert_eq!(w.attributes["lives_alone"], AttrValue::Bool(true));
        assert_eq!(
            w.attributes["mobility"],
            AttrValue::Text("wheelchair".into())
        );
        assert_eq!(w.attributes["floor"], AttrValue::Int(3));
        let l = &got[1];
        assert_eq!(
            (l.phone.as_deref(), l.location, l.contacts.len()),
            (None, None, 0)
        );
        assert_eq!(l.time_zone.as_deref(), Some("America/New_York"));
        assert_eq!(l.attributes.len(), 1, "empty cells are absent attributes");
    }

    #[test]
    fn csv_errors_name_every_bad_line() {
        let text = format!(
            "{HEADER}r-1,Good,,,,,,,,,,,,,,,\n\
             r-2,,abc,,91,,,,Mars/Base,Wang Li,,,,,,,\n\
             r-3,\"Multi\nline name\",,,,,,,,,,,,,,,\n\
             r-4,Short row\n\
             r-1,Again,,,,,,,,,,,,,,,\n"
        );
        let errors = parse_csv("r.csv", &text).unwrap_err();
        assert_eq!(
            errors,
            vec![
                "r.csv:3: resident r-2: give both lat and lon, or neither".to_string(),
                "r.csv:3: resident r-2: name is missing".to_string(),
                "r.csv:3: resident r-2: phone \"abc\" must be a phone number: digits, spaces, + - ( ), at most 32 characters".to_string(),
                "r.csv:3: resident r-2: contact 1 phone is missing: a contact is someone to call".to_string(),
                "r.csv:3: resident r-2: time_zone \"Mars/Base\" is not a known IANA time zone (e.g. Asia/Shanghai, UTC)".to_string(),
                "r.csv:4: resident r-3: name contains a line break or a control character".to_string(),
                "r.csv:6: resident r-4: the row has 2 fields, the header has 17".to_string(),
                "r.csv:7: resident r-1: the same id is already on line 2".to_string(),
            ],
            "every problem of every row, at the line the row starts on"
        );
    }

    #[test]
    fn toml_contact_problems_name_their_resident_and_every_bad_cell() {
        let text = "[[resident]]\nid = \"r-9\"\nname = \"\"\nphone = \"abc\"\ncontacts = [{ name = \"Wang Li\" }, { phone = 7 }]\n";
        let errors = parse_toml("r.toml", text).unwrap_err();
        assert_eq!(
            errors,
            vec![
                "r.toml:1: contact 1 of resident r-9: missing phone".to_string(),
                "r.toml:1: contact 2 of resident r-9: missing name".to_string(),
                "r.toml:1: contact 2 of resident r-9: phone must be text, not integer".to_string(),
                "r.toml:1: resident r-9: name is missing".to_string(),
                "r.toml:1: resident r-9: phone \"abc\" must be a phone number: digits, spaces, + - ( ), at most 32 characters".to_string(),
            ]
        );
    }

    #[test]
    fn csv_header_problems() {
        let errors = parse_csv("r.csv", "id,nmae,phone,phone\n").unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0].starts_with("r.csv:1: unknown column \"nmae\""),
            "{}",
            errors[0]
        );
        assert_eq!(errors[1], "r.csv:1: column \"phone\" appears twice");
        assert_eq!(errors[2], "r.csv:1: the header has no \"name\" column");
        assert_eq!(
            parse_csv("r.csv", "").unwrap_err(),
            vec!["r.csv: the file is empty (expected a header row: id,name,...)"]
        );
        assert_eq!(
            parse_csv("r.csv", "id,name\n").unwrap_err(),
            vec!["r.csv: no residents in the file"]
        );
    }

    #[test]
    fn toml_residents_and_their_lines() {
        let text = r#"
[[resident]]
id = "r-1001"
name = "Wang Xiuying"
location = { lat = 31.19, lon = 121.44 }
attributes = { lives_alone = true, floor = 3 }
contacts = [{ name = "Wang Li", phone = "+86 139 0000 0002", relation = "daughter" }]

[[resident]]
id = "r-1002"
name = "Li Hua"
time_zone = "Asia/Tokyo"
[[resident.contacts]]
name = "Neighbour Zhou"
phone = "021 5555 0102"
"#;
        let got = parse_toml("r.toml", text).expect("valid");
        assert_eq!(got[0].attributes["floor"], AttrValue::Int(3));
        assert_eq!(got[0].contacts[0].name, "Wang Li");
        assert_eq!(got[1].contacts[0].relation, None);

        let bad = r#"[[resident]]
id = "r-1"
name = "One"
phon = "123"

[[resident]]
id = "r-2"
name = "Two"
attributes = { height = 1.6 }

[[resident]]
id = "r-3"
name = "Three"
location = { lat = 31.0, lon = 200.0 }
"#;
        let errors = parse_toml("r.toml", bad).unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0].starts_with("r.toml:1: resident r-1: unknown field `phon`"),
            "{}",
            errors[0]
        );
        assert_eq!(errors[1], "r.toml:6: resident r-2: attribute height must be a boolean, an integer or a string, not float");
        assert_eq!(
            errors[2],
            "r.toml:11: resident r-3: location: lon 200 must be between -180 and 180"
        );
        let syntax = parse_toml("r.toml", "[[resident]]\nid = \"x\nname = 1\n").unwrap_err();
        assert!(syntax[0].starts_with("r.toml:2:"), "{syntax:?}");
    }
}
