//! The requirement catalogue of the conformance kit: every scenario the kit runs, the
//! requirement it checks, the PRODUCT.md section that states it, and the HTTP exchange a
//! conforming deployment gives. `signpost conformance --list` prints it.

/// Which side of the loop a scenario plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    Referrer,
    Charity,
}

impl Suite {
    pub fn as_str(self) -> &'static str {
        match self {
            Suite::Referrer => "referrer",
            Suite::Charity => "charity",
        }
    }
}

/// One requirement and the scenario that checks it.
pub struct Requirement {
    pub id: &'static str,
    pub suite: Suite,
    pub title: &'static str,
    /// The PRODUCT.md section that states the requirement.
    pub section: &'static str,
    /// The exchange a conforming deployment gives.
    pub expected: &'static str,
}

const fn req(
    id: &'static str,
    suite: Suite,
    title: &'static str,
    section: &'static str,
    expected: &'static str,
) -> Requirement {
    Requirement { id, suite, title, section, expected }
}

use Suite::{Charity, Referrer};

/// Every requirement, in the order the kit runs them.
pub const CATALOGUE: &[Requirement] = &[
    req(
        "REF-AUTH-01",
        Referrer,
        "Requests without a valid API key are refused",
        "§7 Security and privacy",
        "GET /fhir/Task with no Authorization header, then with an unknown key: 401 with an OperationOutcome each time",
    ),
    req(
        "REF-SEND-01",
        Referrer,
        "A valid referral with an explicit performer is accepted and routed to that charity",
        "§2 Intake, §4 Directory and routing",
        "POST /fhir/Patient, /fhir/Consent, then /fhir/ServiceRequest naming the charity as performer: 201 with Location and ETag; GET /fhir/Task?based-on=ServiceRequest/{id}: one Task owned by the charity, status requested",
    ),
    req(
        "REF-INVALID-01",
        Referrer,
        "A body that is not JSON is refused",
        "§3 Validation",
        "POST /fhir/ServiceRequest with a truncated JSON body: 400 with an OperationOutcome holding an error",
    ),
    req(
        "REF-INVALID-02",
        Referrer,
        "A referral without its subject is refused and nothing is stored",
        "§3 Validation",
        "POST /fhir/ServiceRequest without subject: 400 or 422, an error issue; a search by the referral's identifier finds nothing",
    ),
    req(
        "REF-INVALID-03",
        Referrer,
        "An unknown element is refused, with its place named",
        "§3 Validation",
        "POST /fhir/ServiceRequest with `reasonCodes` (a typo): 400, an error issue whose expression starts with ServiceRequest; nothing stored",
    ),
    req(
        "REF-INVALID-04",
        Referrer,
        "A code outside a required value set is refused",
        "§3 Validation",
        "POST /fhir/ServiceRequest with status `open`: 400, an error issue at ServiceRequest.status; nothing stored",
    ),
    req(
        "REF-INVALID-05",
        Referrer,
        "A badly formatted date is refused",
        "§3 Validation",
        "POST /fhir/ServiceRequest with authoredOn `14/03/2024`: 400, an error issue at ServiceRequest.authoredOn; nothing stored",
    ),
    req(
        "REF-INVALID-06",
        Referrer,
        "A referral for a patient without consent to share is refused by the referral rules",
        "§3 Validation (referral rules)",
        "POST /fhir/ServiceRequest for a Patient with no Consent: 422, issue code consent-missing; nothing stored",
    ),
    req(
        "REF-INVALID-07",
        Referrer,
        "A resource of the wrong type for the endpoint is refused",
        "§3 Validation",
        "POST a Patient to /fhir/ServiceRequest: 400 with an error; nothing stored",
    ),
    req(
        "REF-IDEM-01",
        Referrer,
        "A retried referral is stored once",
        "§2 Intake; RELIABILITY.md (idempotency)",
        "POST /fhir/ServiceRequest twice with the same X-Request-Id: the same status and id both times; a search by its identifier finds one",
    ),
    req(
        "REF-BUNDLE-01",
        Referrer,
        "A transaction Bundle is stored all or nothing",
        "§2 Intake (transaction Bundles)",
        "POST /fhir a transaction (Patient, Consent, ServiceRequest by urn:uuid): 200 transaction-response, every entry 201; the same with one invalid entry: 4xx and none of its resources stored",
    ),
    req(
        "REF-ROUTE-01",
        Referrer,
        "A referral without a performer is routed by its condition",
        "§4 Directory and routing",
        "POST /fhir/ServiceRequest with a reasonCode and no performer: 201; GET /fhir/Task?based-on=...: at least one Task, each owned by an Organization other than the referrer",
    ),
    req(
        "REF-BARS-01",
        Referrer,
        "A BaRS referral message is processed and answered with a response message",
        "§2 Intake (BaRS-style messages)",
        "POST /fhir/$process-message with X-Request-Id and X-Correlation-Id: 200, a message Bundle whose MessageHeader.response.identifier is the request Bundle's id, with code ok; the same X-Request-Id again: 409",
    ),
    req(
        "REF-REVOKE-01",
        Referrer,
        "Revoking a referral cancels its open Tasks",
        "§6 Feedback and lifecycle",
        "PATCH /fhir/ServiceRequest/{id} status revoked: 200; its Tasks become cancelled",
    ),
    req(
        "REF-POLL-01",
        Referrer,
        "The referrer finds its referral's Tasks by search, and by time",
        "§5 Delivery (polling)",
        "GET /fhir/Task?based-on=ServiceRequest/{id}: a searchset with the Task and a total; with _lastUpdated=ge{time before sending}: the Task again",
    ),
    req(
        "REF-FEED-01",
        Referrer,
        "The change feed carries a new referral after the cursor taken before it",
        "§5 Delivery (polling)",
        "GET /fhir/$changes?cursor=N (N read just before sending): a history Bundle holding the new ServiceRequest and its Task, and a next link",
    ),
    req(
        "REF-OUTCOME-01",
        Referrer,
        "The referrer reads the outcome the charity recorded",
        "§6 Feedback and lifecycle (the loop closes)",
        "GET /fhir/Task/{id} as the referrer after the charity completed it: status completed with its coded output; GET /fhir/Task/{id}/$outcome-summary: a document Bundle",
    ),
    req(
        "CH-FIND-01",
        Charity,
        "A charity finds its new Tasks",
        "§5 Delivery (polling), §9",
        "GET /fhir/Task?owner=Organization/{charity}&status=requested: a searchset holding the new Task",
    ),
    req(
        "CH-STALE-01",
        Charity,
        "An update from a stale version is refused",
        "§6 Feedback and lifecycle",
        "PATCH /fhir/Task/{id} with If-Match of an older version: 412; the Task is unchanged",
    ),
    req(
        "CH-ACCEPT-01",
        Charity,
        "A charity accepts a Task",
        "§6 Feedback and lifecycle",
        "PATCH /fhir/Task/{id} status accepted with If-Match: 200, status accepted and a new version",
    ),
    req(
        "CH-COMPLETE-01",
        Charity,
        "A charity completes a Task with a coded outcome",
        "§6 Feedback and lifecycle",
        "PATCH /fhir/Task/{id} status completed with output (support-outcome): 200, status completed",
    ),
    req(
        "CH-ILLEGAL-01",
        Charity,
        "Moves the lifecycle does not allow are refused",
        "§6 Feedback and lifecycle",
        "PATCH a completed Task back to requested: 4xx OperationOutcome; PATCH a Task's focus: 4xx; the Task is unchanged",
    ),
    req(
        "CH-REJECT-01",
        Charity,
        "A charity rejects a Task with a coded reason",
        "§6 Feedback and lifecycle",
        "PATCH /fhir/Task/{id} status rejected with statusReason (rejection-reason out-of-area): 200; the referrer sees the reason",
    ),
    req(
        "CH-REJECT-02",
        Charity,
        "A rejection without a reason is refused",
        "§6 Feedback and lifecycle",
        "PATCH /fhir/Task/{id} status rejected without statusReason: 4xx OperationOutcome; the Task stays requested",
    ),
    req(
        "CH-FOREIGN-01",
        Charity,
        "Another charity can neither read nor change the Task",
        "§7 Security and privacy",
        "GET and PATCH /fhir/Task/{id} with another charity's key: 404 (or 403 for the write); its search does not list the Task",
    ),
    req(
        "CH-WEBHOOK-01",
        Charity,
        "Webhooks are signed with Standard Webhooks and carry no patient data",
        "§5 Delivery to charities",
        "An Endpoint of the charity pointed at the kit's receiver (an operator sets it and its secret): the referral.created event arrives, its webhook-signature verifies with the secret (Standard Webhooks reference implementation), its body names the Task and holds no patient identifier",
    ),
];

/// The catalogue entry for `id`.
pub fn requirement(id: &str) -> &'static Requirement {
    CATALOGUE.iter().find(|r| r.id == id).unwrap_or_else(|| panic!("{id} is in the catalogue"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_every_requirement_names_its_section() {
        let mut ids: Vec<&str> = CATALOGUE.iter().map(|r| r.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), CATALOGUE.len());
        assert!(CATALOGUE.iter().all(|r| r.section.starts_with('§') && !r.expected.is_empty()));
    }
}
