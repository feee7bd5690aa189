//! The store side of the referral business rules: the stored Patient and Consents a referral
//! points to, as the submitting client may see them.

use serde_json::Value;

use crate::auth::{Principal, Role};
use crate::fhir::parse_reference;
use crate::fhir::referral_rules::{Lookup, Records};
use crate::fhir::search::Criteria;
use crate::store::{DbConn, StoreError, resources};

pub(super) struct StoreRecords<'c> {
    pub conn: &'c mut DbConn,
    pub principal: &'c Principal,
}

impl StoreRecords<'_> {
    fn visible_to(&self) -> Option<String> {
        (self.principal.role != Role::Operator).then(|| self.principal.org_id.clone())
    }
}

/// Stored bodies were serialised by Signpost itself.
fn body(r: &resources::StoredResource) -> Value {
    serde_json::from_str(&r.body).unwrap_or(Value::Null)
}

impl Records for StoreRecords<'_> {
    type Error = StoreError;

    fn patient(&mut self, reference: &str) -> Result<Lookup<Value>, StoreError> {
        let Some(("Patient", id)) = parse_reference(reference) else { return Ok(Lookup::Missing) };
        if let Some(org) = self.visible_to()
            && !resources::is_visible(self.conn, "Patient", id, &org)?
        {
            return Ok(Lookup::Missing);
        }
        Ok(match resources::get(self.conn, "Patient", id)? {
            Some(r) => Lookup::Found(body(&r)),
            None => Lookup::Missing,
        })
    }

    fn consents(&mut self, patient_reference: &str) -> Result<Lookup<Vec<Value>>, StoreError> {
        let criteria = Criteria {
            resource_type: "Consent".into(),
            params: vec![("patient".into(), vec![patient_reference.to_string()])],
            visible_to: self.visible_to(),
            count: 50,
            ..Default::default()
        };
        let (_, found) = resources::search(self.conn, &criteria)?;
        Ok(Lookup::Found(found.iter().map(body).collect()))
    }
}
