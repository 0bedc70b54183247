//! What a contact's earlier enrollments in a sequence were, so that `enroll` can say
//! why it left someone out ("already finished sequence 'intro' on ...").

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{QueryBuilder, Row};

use super::{from_ms, stored_state, Pool, Result, Store, CHUNK};
use crate::model::EnrollmentState;

/// A contact's latest enrollment in a sequence: its state, why, and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    pub contact_id: i64,
    pub state: EnrollmentState,
    pub reason: Option<String>,
    pub since: DateTime<Utc>,
}

impl Store {
    /// The latest enrollment in `sequence` of each of `contact_ids` that has one.
    pub async fn latest_enrollments(
        &self,
        sequence: &str,
        contact_ids: &[i64],
    ) -> Result<HashMap<i64, Existing>> {
        let mut out: HashMap<i64, Existing> = HashMap::new();
        for chunk in contact_ids.chunks(CHUNK) {
            with_read_pool!(self, p => {
                let mut qb = QueryBuilder::new(
                    "SELECT id, contact_id, state, reason, updated_at FROM enrollments WHERE sequence = ",
                );
                qb.push_bind(sequence).push(" AND contact_id IN (");
                let mut sep = qb.separated(", ");
                for id in chunk {
                    sep.push_bind(*id);
                }
                qb.push(") ORDER BY id");
                // In id order, so the latest of a contact's rows is the one kept.
                for r in qb.build().fetch_all(p).await? {
                    let e = Existing {
                        contact_id: r.try_get("contact_id")?,
                        state: stored_state(r.try_get("state")?)?,
                        reason: r.try_get("reason")?,
                        since: from_ms(r.try_get("updated_at")?),
                    };
                    out.insert(e.contact_id, e);
                }
            });
        }
        Ok(out)
    }
}
