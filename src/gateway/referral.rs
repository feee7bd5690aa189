//! The store side of the referral business rules: the stored Patient and Consents a referral
//! points to, as the submitting client may see them.

use serde_json::Value;

use crate::auth::{Principal, Role};
use crate::error::ApiError;
use crate::fhir::ValidationMode;
use crate::fhir::outcome::{Issue, has_errors};
use crate::fhir::parse_reference;
use crate::fhir::referral_rules::{Lookup, Records};
use crate::fhir::search::Criteria;
use crate::store::{DbConn, StoreError, resources};

struct StoreRecords<'c> {
    conn: &'c mut DbConn,
    principal: &'c Principal,
}

/// Add the referral rules' issues for a submission (a ServiceRequest or a Bundle), looking
/// up the Patient and Consents it points to as `principal` may see them.
pub(super) fn referral_issues(
    conn: &mut DbConn,
    principal: &Principal,
    resource: &Value,
    root: &str,
    mode: ValidationMode,
    issues: &mut Vec<Issue>,
) -> Result<(), StoreError> {
    crate::fhir::check_referral_rules(resource, root, mode, &mut StoreRecords { conn, principal }, issues)
}

/// Refuse a write (422) whose referral rules fail; otherwise their warnings.
pub(super) fn enforce_referral_rules(
    conn: &mut DbConn,
    principal: &Principal,
    resource: &Value,
    root: &str,
    mode: ValidationMode,
) -> Result<Vec<Issue>, ApiError> {
    let mut issues = Vec::new();
    referral_issues(conn, principal, resource, root, mode, &mut issues)?;
    if has_errors(&issues) {
        return Err(ApiError::issues(422, issues));
    }
    Ok(issues)
}

impl StoreRecords<'_> {
    fn visible_to(&self) -> Option<String> {
        (self.principal.role != Role::Operator).then(|| self.principal.org_id.clone())
    }
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
            Some(r) => Lookup::Found(r.json()?),
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
        let found = resources::find(self.conn, &criteria)?;
        Ok(Lookup::Found(found.iter().map(resources::StoredResource::json).collect::<Result<_, _>>()?))
    }
}
