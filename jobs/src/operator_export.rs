use std::time::Duration;

use chrono::{DateTime, Datelike, Months, NaiveTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Job;

/// A scheduled export for the operators, of the period before its slot:
/// the month's payment records as CSV (the five-year tax record), or the
/// day's access log as gzipped JSON lines (the law's six-month minimum).
/// Written to the bucket under a key of its period, recorded for
/// `GET /admin/v1/exports` and announced to the operators' address by a
/// signed link. Run again for the same slot it writes the same file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorExport {
    pub export: OperatorExportKind,
    /// The scheduler slot that asked for it: the period ends where the
    /// slot's month (or day) begins.
    pub slot: DateTime<Utc>,
}

/// Which scheduled export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorExportKind {
    /// Payment records paid in the calendar month before the slot (UTC).
    Accounting,
    /// Access-log entries of the UTC day before the slot.
    AccessLog,
}

impl OperatorExportKind {
    pub const ALL: [OperatorExportKind; 2] = [
        OperatorExportKind::Accounting,
        OperatorExportKind::AccessLog,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OperatorExportKind::Accounting => "accounting",
            OperatorExportKind::AccessLog => "access_log",
        }
    }

    pub fn parse(s: &str) -> Option<OperatorExportKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The period `[start, end)` a slot exports.
    pub fn period(self, slot: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
        let day = slot.date_naive();
        match self {
            OperatorExportKind::Accounting => {
                let end = day.with_day(1).unwrap_or(day);
                let start = end.checked_sub_months(Months::new(1)).unwrap_or(end);
                (midnight(start), midnight(end))
            }
            OperatorExportKind::AccessLog => {
                let end = midnight(day);
                (end - TimeDelta::days(1), end)
            }
        }
    }

    /// Where a period's file goes: one key per period, so a run again
    /// overwrites instead of adding.
    pub fn object_key(self, start: DateTime<Utc>) -> String {
        match self {
            OperatorExportKind::Accounting => {
                format!("operator-exports/accounting/{}.csv", start.format("%Y-%m"))
            }
            OperatorExportKind::AccessLog => format!(
                "operator-exports/access-log/{}.jsonl.gz",
                start.format("%Y-%m-%d")
            ),
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            OperatorExportKind::Accounting => "text/csv",
            OperatorExportKind::AccessLog => "application/gzip",
        }
    }
}

/// Where the operators' exports live in the bucket.
pub const OPERATOR_EXPORTS: &str = "operator-exports/";

fn midnight(day: chrono::NaiveDate) -> DateTime<Utc> {
    day.and_time(NaiveTime::MIN).and_utc()
}

impl Job for OperatorExport {
    type Result = OperatorExportResult;
    const KIND: &'static str = "operator_export";
    const QUEUE: &'static str = "maintenance";
    const MAX_ATTEMPTS: u32 = 10;
    const TIMEOUT: Duration = Duration::from_secs(3600);
}

/// What a scheduled export wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorExportResult {
    /// Its entry in `GET /admin/v1/exports`.
    pub id: Uuid,
    pub object_key: String,
    pub rows: u64,
    pub bytes: u64,
    /// Whether an email went to the operators' address.
    pub announced: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_slot_exports_the_month_or_day_before_it() {
        let slot = at("2027-01-01T04:00:00Z");
        assert_eq!(
            OperatorExportKind::Accounting.period(slot),
            (at("2026-12-01T00:00:00Z"), at("2027-01-01T00:00:00Z"))
        );
        // Mid-month too (a catch-up fired late): still the month before.
        assert_eq!(
            OperatorExportKind::Accounting.period(at("2027-03-17T12:00:00Z")),
            (at("2027-02-01T00:00:00Z"), at("2027-03-01T00:00:00Z"))
        );
        assert_eq!(
            OperatorExportKind::AccessLog.period(at("2027-03-01T03:45:00Z")),
            (at("2027-02-28T00:00:00Z"), at("2027-03-01T00:00:00Z"))
        );
        assert_eq!(
            OperatorExportKind::Accounting.object_key(at("2026-12-01T00:00:00Z")),
            "operator-exports/accounting/2026-12.csv"
        );
        assert_eq!(
            OperatorExportKind::AccessLog.object_key(at("2027-02-28T00:00:00Z")),
            "operator-exports/access-log/2027-02-28.jsonl.gz"
        );
        for kind in OperatorExportKind::ALL {
            assert_eq!(OperatorExportKind::parse(kind.as_str()), Some(kind));
        }
    }
}
