//! Target lists as CSV: a header row, a phone column (by name), every other column the target's
//! metadata (`postal_code` or `zip` feeds the calling rules). Read as the bytes arrive, with
//! csv-core's push parser, so a list of any length takes bounded memory: each row is checked,
//! its number put in E.164 form with the default region, duplicates merged into their first
//! listing, and the targets handed out as they come. A bad row is rejected with its line and
//! reason; what makes the whole list unreadable (UTF-16, bytes that are not UTF-8, no phone
//! column, a runaway quoted field) is an error naming the line.

use std::collections::HashSet;

use csv_core::{ReadFieldResult, Reader, ReaderBuilder};
use dialer_domain::FieldError;
use dialer_domain::phone::{self, Region};
use dialer_domain::settings::NewTarget;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::campaigns::METADATA_MAX_BYTES;

/// Rejected rows listed in the report (all are counted).
pub const REJECTS_SHOWN: usize = 100;
/// Longest field read; a longer one is most likely an unclosed quote.
pub const FIELD_MAX_BYTES: usize = 64 * 1024;
/// Most columns a row may have.
pub const COLUMNS_MAX: usize = 256;
/// The phone column's names tried, in order, when the request names none.
pub const PHONE_COLUMNS: [&str; 7] = ["phone_number", "phone", "number", "msisdn", "mobile", "telephone", "tel"];

/// How to read a list.
#[derive(Clone, Debug, Default)]
pub struct CsvOptions {
    /// The phone column's header (any case); `None`: the first of [`PHONE_COLUMNS`] present.
    pub phone_column: Option<String>,
    /// Numbers without `+` or an international prefix are national numbers of this region.
    pub region: Option<Region>,
}

/// A target read from a list, with the line its row starts on.
#[derive(Clone, Debug, PartialEq)]
pub struct Listed {
    pub line: u64,
    pub target: NewTarget,
}

/// What became of a list's rows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct ImportReport {
    /// Data rows read (blank lines and the header not counted).
    pub rows: u64,
    /// Rows that became targets.
    pub accepted: u64,
    /// Rows whose number an earlier row already listed: merged into that first listing.
    pub duplicates_merged: u64,
    /// Rows refused (each listed in `rejected`, up to 100).
    pub rejected_total: u64,
    pub rejected: Vec<RejectedRow>,
    /// The column the numbers were read from.
    pub phone_column: String,
    /// The field separator found in the header: `,`, `;` or a tab.
    pub delimiter: String,
}

/// A row refused, by its line in the file (the header is line 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct RejectedRow {
    pub line: u64,
    /// The column at fault, if one is.
    pub column: Option<String>,
    pub reason: String,
}

/// Why a list cannot be read at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CsvError {
    #[error("the list is UTF-16 text: save it as \"CSV UTF-8\"")]
    Utf16,
    #[error("line {line} is not UTF-8 text: save the list as \"CSV UTF-8\"")]
    NotUtf8 { line: u64 },
    #[error("the list is empty: give a header row naming the columns, then one row per number")]
    Empty,
    #[error("no phone column: the header names {header:?}; name the column that holds the numbers with phone_column")]
    NoPhoneColumn { header: Vec<String> },
    #[error("the header names column {0:?} twice")]
    DuplicateColumn(String),
    #[error("line {line}: a field longer than {FIELD_MAX_BYTES} bytes (a quote never closed?)")]
    FieldTooLong { line: u64 },
    #[error("line {line}: more than {COLUMNS_MAX} fields")]
    TooManyColumns { line: u64 },
}

impl CsvError {
    /// The error as the API reports it: on `phone_column` when that is what is missing,
    /// otherwise on the list itself (`field`, the part or body that held it).
    pub fn field_error(&self, field: &str) -> FieldError {
        match self {
            CsvError::NoPhoneColumn { .. } => FieldError::new("phone_column", self.to_string()),
            _ => FieldError::new(field, self.to_string()),
        }
    }
}

/// The header, once read.
#[derive(Debug)]
struct Header {
    columns: Vec<String>,
    phone: usize,
}

/// A list being read: feed it the bytes as they arrive ([`CsvList::feed`]), then
/// [`CsvList::finish`].
#[derive(Debug)]
pub struct CsvList {
    options: CsvOptions,
    /// The bytes before the first line's end, kept to find the separator; `None` once found.
    sniffing: Option<Vec<u8>>,
    reader: Reader,
    delimiter: u8,
    field: Vec<u8>,
    field_len: usize,
    record: Vec<String>,
    record_line: u64,
    /// No byte of the next record was read yet.
    at_record_start: bool,
    header: Option<Header>,
    /// The numbers listed so far (E.164 digits fit a u64): 1M numbers cost about 16 MB.
    seen: HashSet<u64>,
    report: ImportReport,
}

impl CsvList {
    pub fn new(options: CsvOptions) -> CsvList {
        CsvList {
            options,
            sniffing: Some(Vec::new()),
            reader: Reader::new(),
            delimiter: b',',
            field: vec![0; 256],
            field_len: 0,
            record: Vec::new(),
            record_line: 1,
            at_record_start: true,
            header: None,
            seen: HashSet::new(),
            report: ImportReport::default(),
        }
    }

    /// Rows that became targets so far.
    pub fn accepted(&self) -> u64 {
        self.report.accepted
    }

    /// Reads the next bytes of the list; the targets of the rows they complete go to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<Listed>) -> Result<(), CsvError> {
        if let Some(buf) = &mut self.sniffing {
            buf.extend_from_slice(bytes);
            if !buf.contains(&b'\n') && buf.len() < FIELD_MAX_BYTES {
                return Ok(());
            }
            let head = self.sniffing.take().unwrap_or_default();
            self.start(&head)?;
            return self.parse(&head, false, out);
        }
        self.parse(bytes, false, out)
    }

    /// The list has ended: the last row's targets go to `out`, and the report is final.
    pub fn finish(mut self, out: &mut Vec<Listed>) -> Result<ImportReport, CsvError> {
        if let Some(head) = self.sniffing.take() {
            self.start(&head)?;
            self.parse(&head, false, out)?;
        }
        self.parse(&[], true, out)?;
        let header = self.header.as_ref().ok_or(CsvError::Empty)?;
        self.report.phone_column = header.columns[header.phone].clone();
        self.report.delimiter =
            if self.delimiter == b'\t' { "\t".into() } else { (self.delimiter as char).to_string() };
        Ok(self.report)
    }

    /// The first line is known: refuse UTF-16, and take the separator it uses most.
    fn start(&mut self, head: &[u8]) -> Result<(), CsvError> {
        if head.starts_with(&[0xFF, 0xFE]) || head.starts_with(&[0xFE, 0xFF]) {
            return Err(CsvError::Utf16);
        }
        let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
        let count = |d: u8| line.iter().filter(|b| **b == d).count();
        self.delimiter = [b',', b';', b'\t'].into_iter().max_by_key(|d| (count(*d), *d == b',')).unwrap_or(b',');
        self.reader = ReaderBuilder::new().delimiter(self.delimiter).build();
        Ok(())
    }

    /// Runs the parser over `input` (`eof`: no more will come).
    fn parse(&mut self, mut input: &[u8], eof: bool, out: &mut Vec<Listed>) -> Result<(), CsvError> {
        loop {
            if self.at_record_start {
                input = self.skip_line_ends(input);
            }
            if input.is_empty() && !eof {
                return Ok(());
            }
            let (res, nin, nout) = self.reader.read_field(input, &mut self.field[self.field_len..]);
            self.at_record_start &= nin == 0;
            input = &input[nin..];
            self.field_len += nout;
            match res {
                ReadFieldResult::InputEmpty => {
                    if eof {
                        return Ok(());
                    }
                }
                ReadFieldResult::OutputFull => self.grow()?,
                ReadFieldResult::Field { record_end } => {
                    self.end_field()?;
                    if record_end {
                        self.end_record(out)?;
                        self.at_record_start = true;
                    }
                }
                ReadFieldResult::End => return Ok(()),
            }
        }
    }

    /// Between records: the line ends before the next (a CRLF's LF, blank lines) go to the
    /// parser first, so that the next record's line is the one it starts on.
    fn skip_line_ends<'i>(&mut self, input: &'i [u8]) -> &'i [u8] {
        let ends = input.iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
        let nin =
            if ends > 0 { self.reader.read_field(&input[..ends], &mut self.field[self.field_len..]).1 } else { 0 };
        self.record_line = self.reader.line();
        &input[nin..]
    }

    fn grow(&mut self) -> Result<(), CsvError> {
        if self.field.len() >= FIELD_MAX_BYTES {
            return Err(CsvError::FieldTooLong { line: self.record_line });
        }
        self.field.resize(self.field.len() * 2, 0);
        Ok(())
    }

    fn end_field(&mut self) -> Result<(), CsvError> {
        let text = std::str::from_utf8(&self.field[..self.field_len])
            .map_err(|_| CsvError::NotUtf8 { line: self.record_line })?;
        if self.record.len() == COLUMNS_MAX {
            return Err(CsvError::TooManyColumns { line: self.record_line });
        }
        self.record.push(text.trim().to_string());
        self.field_len = 0;
        Ok(())
    }

    fn end_record(&mut self, out: &mut Vec<Listed>) -> Result<(), CsvError> {
        let record = std::mem::take(&mut self.record);
        if record.iter().all(String::is_empty) {
            return Ok(());
        }
        match &self.header {
            None => self.header = Some(self.read_header(record)?),
            Some(_) => self.row(record, out),
        }
        Ok(())
    }

    fn read_header(&self, columns: Vec<String>) -> Result<Header, CsvError> {
        let mut names = HashSet::new();
        if let Some(dup) = columns.iter().find(|c| !c.is_empty() && !names.insert(c.to_lowercase())) {
            return Err(CsvError::DuplicateColumn(dup.clone()));
        }
        let find = |name: &str| columns.iter().position(|c| c.eq_ignore_ascii_case(name));
        let phone = match &self.options.phone_column {
            Some(name) => find(name),
            None => PHONE_COLUMNS.iter().find_map(|n| find(n)),
        };
        let phone = phone.ok_or_else(|| CsvError::NoPhoneColumn { header: columns.clone() })?;
        Ok(Header { columns, phone })
    }

    /// One data row: a target, a duplicate merged, or a row rejected.
    fn row(&mut self, mut record: Vec<String>, out: &mut Vec<Listed>) {
        self.report.rows += 1;
        match self.target(&mut record) {
            Ok(Some(target)) => {
                self.report.accepted += 1;
                out.push(Listed { line: self.record_line, target });
            }
            Ok(None) => self.report.duplicates_merged += 1,
            Err((column, reason)) => self.reject(column, reason),
        }
    }

    /// The row's target; `None` when an earlier row listed its number.
    fn target(&mut self, record: &mut Vec<String>) -> Result<Option<NewTarget>, (Option<String>, String)> {
        let Some(h) = &self.header else { return Err((None, "no header".into())) };
        if record.len() > h.columns.len() {
            return Err((None, format!("has {} fields; the header names {}", record.len(), h.columns.len())));
        }
        record.resize(h.columns.len(), String::new());
        let phone_column = &h.columns[h.phone];
        let number = phone::normalize(&record[h.phone], self.options.region)
            .map_err(|e| (Some(phone_column.clone()), format!("{:?} {e}", record[h.phone])))?;
        if !self.seen.insert(number[1..].parse::<u64>().unwrap_or_default()) {
            return Ok(None);
        }
        let mut metadata = Map::new();
        for (i, (name, value)) in h.columns.iter().zip(record.iter_mut()).enumerate() {
            if i != h.phone && !name.is_empty() && !value.is_empty() {
                metadata.insert(name.clone(), Value::String(std::mem::take(value)));
            }
        }
        let metadata = Value::Object(metadata);
        if metadata.to_string().len() > METADATA_MAX_BYTES {
            self.seen.remove(&number[1..].parse::<u64>().unwrap_or_default());
            return Err((None, format!("its other columns are over {METADATA_MAX_BYTES} bytes of metadata")));
        }
        Ok(Some(NewTarget { phone_number: number, metadata }))
    }

    /// Refuses a row read earlier (the store found its number unusable): no longer accepted.
    pub fn reject_later(report: &mut ImportReport, line: u64, column: &str, reason: String) {
        report.accepted -= 1;
        report.rejected_total += 1;
        if report.rejected.len() < REJECTS_SHOWN {
            report.rejected.push(RejectedRow { line, column: Some(column.to_string()), reason });
            report.rejected.sort_by_key(|r| r.line);
        }
    }

    fn reject(&mut self, column: Option<String>, reason: String) {
        self.report.rejected_total += 1;
        if self.report.rejected.len() < REJECTS_SHOWN {
            self.report.rejected.push(RejectedRow { line: self.record_line, column, reason });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `text` fed in pieces of `piece` bytes.
    fn read(text: &[u8], piece: usize, options: CsvOptions) -> Result<(Vec<NewTarget>, ImportReport), CsvError> {
        let mut list = CsvList::new(options);
        let mut out = Vec::new();
        for chunk in text.chunks(piece.max(1)) {
            list.feed(chunk, &mut out)?;
        }
        let report = list.finish(&mut out)?;
        Ok((out.into_iter().map(|l| l.target).collect(), report))
    }

    fn us() -> CsvOptions {
        CsvOptions { phone_column: None, region: phone::region("US") }
    }

    #[test]
    fn rows_become_targets_with_their_other_columns_as_metadata() {
        let text = b"phone,name,zip\n(415) 555-0101,Ann,94103\n+1 212 555 0102,Bob,\n";
        for piece in [1, 3, 7, 1000] {
            let (targets, report) = read(text, piece, us()).expect("read");
            assert_eq!(targets.len(), 2, "piece {piece}");
            assert_eq!(targets[0].phone_number, "+14155550101");
            assert_eq!(targets[0].metadata, serde_json::json!({"name": "Ann", "zip": "94103"}));
            assert_eq!(targets[1].phone_number, "+12125550102");
            assert_eq!(targets[1].metadata, serde_json::json!({"name": "Bob"}), "empty cells are left out");
            assert_eq!((report.rows, report.accepted, report.rejected_total), (2, 2, 0));
            assert_eq!((report.phone_column.as_str(), report.delimiter.as_str()), ("phone", ","));
        }
    }

    #[test]
    fn bom_crlf_quotes_and_semicolons_from_a_spreadsheet_are_read() {
        let text = "\u{feff}Name;Telephone;Note\r\n\"Smith; Ann\";415 555 0101;\"two\r\nlines\"\r\n\r\nBob;+44 20 7183 8750;x\r\n";
        let (targets, report) = read(text.as_bytes(), 5, us()).expect("read");
        assert_eq!(report.delimiter, ";");
        assert_eq!(report.phone_column, "Telephone");
        let numbers: Vec<&str> = targets.iter().map(|t| t.phone_number.as_str()).collect();
        assert_eq!(numbers, ["+14155550101", "+442071838750"]);
        assert_eq!(targets[0].metadata["Name"], "Smith; Ann");
        assert_eq!(targets[0].metadata["Note"], "two\r\nlines");
        assert_eq!(report.rows, 2, "the blank line is no row");
    }

    #[test]
    fn bad_rows_are_rejected_by_line_and_duplicates_merged_into_the_first() {
        let text = b"phone_number,postal_code\n4155550101,94103\nnot a number,1\n\n415-555-0101,10001\n+1415555010199999,2\n1,2,3\n";
        let (targets, report) = read(text, 4, us()).expect("read");
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].metadata["postal_code"], "94103", "the first listing is kept");
        assert_eq!((report.rows, report.accepted, report.duplicates_merged, report.rejected_total), (5, 1, 1, 3));
        let lines: Vec<u64> = report.rejected.iter().map(|r| r.line).collect();
        assert_eq!(lines, [3, 6, 7]);
        assert_eq!(report.rejected[0].column.as_deref(), Some("phone_number"));
        assert!(report.rejected[0].reason.contains("characters a phone number does not"), "{:?}", report.rejected[0]);
        assert!(report.rejected[2].reason.contains("has 3 fields"), "{:?}", report.rejected[2]);
    }

    #[test]
    fn each_target_keeps_the_line_its_row_starts_on() {
        let mut list = CsvList::new(us());
        let mut out = Vec::new();
        list.feed(b"phone,note\n+14155550101,\"a\nb\"\n+14155550102,c\n", &mut out).expect("feed");
        let mut report = list.finish(&mut out).expect("finish");
        assert_eq!(out.iter().map(|l| l.line).collect::<Vec<_>>(), [2, 4]);
        for piece in [1, 2, 5, 100] {
            let crlf = b"phone,note\r\n+14155550101,\"a\r\nb\"\r\n\r\n+14155550102,c\r\n+14155550103,c";
            let mut list = CsvList::new(us());
            let mut out = Vec::new();
            crlf.chunks(piece).for_each(|c| list.feed(c, &mut out).expect("feed"));
            list.finish(&mut out).expect("finish");
            assert_eq!(out.iter().map(|l| l.line).collect::<Vec<_>>(), [2, 5, 6], "CRLF in pieces of {piece}");
        }
        CsvList::reject_later(&mut report, 4, "phone", "not registered".into());
        assert_eq!((report.accepted, report.rejected_total, report.rejected[0].line), (1, 1, 4));
    }

    #[test]
    fn only_the_first_hundred_rejects_are_listed_and_all_are_counted() {
        let mut text = String::from("phone\n");
        for _ in 0..250 {
            text.push_str("nope\n");
        }
        let (targets, report) = read(text.as_bytes(), 64, us()).expect("read");
        assert!(targets.is_empty());
        assert_eq!(report.rejected_total, 250);
        assert_eq!(report.rejected.len(), REJECTS_SHOWN);
        assert_eq!(report.rejected.last().map(|r| r.line), Some(101));
    }

    #[test]
    fn a_named_column_and_no_region() {
        let text = b"id,cell\n1,+33 1 23 45 67 89\n2,01 23 45 67 89\n";
        let options = CsvOptions { phone_column: Some("CELL".into()), region: None };
        let (targets, report) = read(text, 9, options).expect("read");
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].phone_number, "+33123456789");
        assert!(report.rejected[0].reason.contains("no country code"), "{:?}", report.rejected);
    }

    #[test]
    fn unreadable_lists_are_refused_naming_the_line() {
        let utf16 = [0xFF, 0xFE, b'p', 0, b'\n', 0];
        assert_eq!(read(&utf16, 100, us()).err(), Some(CsvError::Utf16));
        let latin1 = b"phone,name\n+14155550101,Jos\xe9\n";
        assert_eq!(read(latin1, 100, us()).err(), Some(CsvError::NotUtf8 { line: 2 }));
        assert_eq!(read(b"", 100, us()).err(), Some(CsvError::Empty));
        assert_eq!(read(b"\n\n", 100, us()).err(), Some(CsvError::Empty));
        let no_phone = read(b"name,email\na,b\n", 100, us()).err();
        assert!(matches!(&no_phone, Some(CsvError::NoPhoneColumn { header }) if header == &["name", "email"]));
        assert_eq!(no_phone.map(|e| e.field_error("file").field), Some("phone_column".to_string()));
        assert_eq!(read(b"phone,Phone\n", 100, us()).err(), Some(CsvError::DuplicateColumn("Phone".into())));
        let mut runaway = b"phone\n\"+14155550101\n".to_vec();
        runaway.extend(std::iter::repeat_n(b'x', FIELD_MAX_BYTES + 10));
        assert_eq!(read(&runaway, 4096, us()).err(), Some(CsvError::FieldTooLong { line: 2 }));
    }
}
