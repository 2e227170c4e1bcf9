//! The emulator's personalization model: how events update a visitor's real-time profile, and
//! which offers an event plus a profile qualify for. Loaded from a rules TOML file.

use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// Body fields that identify a visitor, in order of preference.
    #[serde(default = "default_identifiers")]
    pub identifiers: Vec<String>,
    /// Accepted API keys (`{account}/{key}`); empty accepts any well-formed key.
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// Tokens in the personalization configuration; empty accepts any well-formed token (3001).
    #[serde(default)]
    pub tokens: Vec<String>,
    /// Client IPs allowed to call (3005); empty allows all.
    #[serde(default)]
    pub ip_allow: Vec<String>,
    /// Real-time attributes that events maintain.
    #[serde(default, rename = "attribute")]
    pub attributes: Vec<Attribute>,
    /// Offers, each with entry criteria.
    #[serde(default, rename = "offer")]
    pub offers: Vec<Offer>,
}

fn default_identifiers() -> Vec<String> {
    vec!["td_client_id".into()]
}

// No `deny_unknown_fields` here: serde does not support it together with `flatten`.
#[derive(Debug, Deserialize)]
pub struct Attribute {
    pub name: String,
    #[serde(flatten)]
    pub kind: AttributeKind,
    /// Only events that pass this filter update the attribute.
    #[serde(default)]
    pub filter: Filter,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AttributeKind {
    /// Counts matching events.
    Counter,
    /// Keeps the last value of `field`.
    Last { field: String },
    /// Keeps the distinct values of `field` (a value or an array), the newest `max`.
    List {
        field: String,
        #[serde(default = "default_list_max")]
        max: usize,
    },
}

fn default_list_max() -> usize {
    50
}

/// An event filter; every condition given must hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub path_prefix: Option<String>,
    pub path_equals: Option<String>,
    #[serde(default)]
    pub field_equals: BTreeMap<String, Value>,
    #[serde(default)]
    pub field_in: BTreeMap<String, Vec<Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Offer {
    pub name: String,
    /// The key event: which events can trigger the offer.
    #[serde(default)]
    pub event: Filter,
    /// Profile criteria; every one must hold.
    #[serde(default)]
    pub criteria: Vec<Criterion>,
    /// Fixed output attributes.
    #[serde(default)]
    pub attributes: Map<String, Value>,
    /// Profile attributes copied into the output under their own names.
    #[serde(default)]
    pub profile_attributes: Vec<String>,
    /// Batch segment ids reported with the offer.
    #[serde(default)]
    pub batch_segments: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Criterion {
    pub attribute: String,
    /// Counter ≥ n.
    pub at_least: Option<u64>,
    /// Last value equals.
    pub equals: Option<Value>,
    /// List contains.
    pub contains: Option<Value>,
}

/// A visitor's real-time profile.
#[derive(Debug, Default, Clone)]
pub struct Profile(HashMap<String, Value>);

impl Filter {
    pub fn matches(&self, event: &Map<String, Value>) -> bool {
        let path = event.get("td_path").and_then(Value::as_str);
        if let Some(prefix) = &self.path_prefix {
            if !path.is_some_and(|p| p.starts_with(prefix.as_str())) {
                return false;
            }
        }
        if let Some(exact) = &self.path_equals {
            if path != Some(exact.as_str()) {
                return false;
            }
        }
        self.field_equals
            .iter()
            .all(|(k, v)| event.get(k) == Some(v))
            && self
                .field_in
                .iter()
                .all(|(k, set)| event.get(k).is_some_and(|v| set.contains(v)))
    }
}

impl Rules {
    /// Fold an event into a profile: the "updated customer information" step.
    pub fn update(&self, profile: &mut Profile, event: &Map<String, Value>) {
        for attr in self.attributes.iter().filter(|a| a.filter.matches(event)) {
            match &attr.kind {
                AttributeKind::Counter => {
                    let n = profile
                        .0
                        .get(&attr.name)
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                    profile.0.insert(attr.name.clone(), Value::from(n + 1));
                }
                AttributeKind::Last { field } => {
                    if let Some(v) = event.get(field) {
                        profile.0.insert(attr.name.clone(), v.clone());
                    }
                }
                AttributeKind::List { field, max } => {
                    let new: Vec<Value> = match event.get(field) {
                        Some(Value::Array(items)) => items.clone(),
                        Some(Value::Null) | None => continue,
                        Some(v) => vec![v.clone()],
                    };
                    let list = profile
                        .0
                        .entry(attr.name.clone())
                        .or_insert_with(|| Value::Array(Vec::new()));
                    if let Value::Array(items) = list {
                        for v in new {
                            items.retain(|x| *x != v);
                            items.push(v);
                        }
                        let excess = items.len().saturating_sub(*max);
                        items.drain(..excess);
                    }
                }
            }
        }
    }

    /// Every offer whose key event and profile criteria hold: all of them, not the first.
    pub fn offers(&self, profile: &Profile, event: &Map<String, Value>) -> Map<String, Value> {
        let mut out = Map::new();
        for offer in &self.offers {
            if !offer.event.matches(event) || !offer.criteria.iter().all(|c| c.holds(profile)) {
                continue;
            }
            let mut attributes = offer.attributes.clone();
            for name in &offer.profile_attributes {
                if let Some(v) = profile.0.get(name) {
                    attributes.insert(name.clone(), v.clone());
                }
            }
            let segments: Vec<Value> = offer
                .batch_segments
                .iter()
                .map(|id| serde_json::json!({ "id": id }))
                .collect();
            out.insert(
                offer.name.clone(),
                serde_json::json!({ "attributes": attributes, "batch_segments": segments }),
            );
        }
        out
    }
}

impl Criterion {
    fn holds(&self, profile: &Profile) -> bool {
        let value = profile.0.get(&self.attribute);
        if let Some(n) = self.at_least {
            if value.and_then(Value::as_u64).unwrap_or(0) < n {
                return false;
            }
        }
        if let Some(expected) = &self.equals {
            if value != Some(expected) {
                return false;
            }
        }
        if let Some(item) = &self.contains {
            if !value
                .and_then(Value::as_array)
                .is_some_and(|l| l.contains(item))
            {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        toml::from_str(
            r#"
            [[attribute]]
            name = "retail_views"
            kind = "counter"
            filter = { path_prefix = "/retail" }
            [[attribute]]
            name = "last_category"
            kind = "last"
            field = "product_category"
            [[attribute]]
            name = "products"
            kind = "list"
            field = "product_list"
            max = 2
            [[offer]]
            name = "loyal"
            event = { path_prefix = "/retail" }
            criteria = [{ attribute = "retail_views", at_least = 3 }]
            attributes = { status = "high" }
            batch_segments = ["1588214"]
            [[offer]]
            name = "women"
            criteria = [{ attribute = "last_category", equals = "women" }]
            profile_attributes = ["last_category"]
            [[offer]]
            name = "shoes"
            criteria = [{ attribute = "products", contains = "shoes" }]
            "#,
        )
        .unwrap()
    }

    fn event(json: &str) -> Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn counters_lists_and_last_values_drive_offers() {
        let rules = rules();
        let mut p = Profile::default();
        let view = event(r#"{"td_path":"/retail/a","product_list":["shoes","hat","cap"]}"#);
        for _ in 0..2 {
            rules.update(&mut p, &view);
            assert!(!rules.offers(&p, &view).contains_key("loyal"));
        }
        rules.update(&mut p, &view);
        let offers = rules.offers(&p, &view);
        assert_eq!(offers["loyal"]["attributes"]["status"], "high");
        assert_eq!(offers["loyal"]["batch_segments"][0]["id"], "1588214");
        // The list keeps the newest two: "shoes" fell out.
        assert!(!offers.contains_key("shoes"));

        let women = event(r#"{"td_path":"/home","product_category":"women"}"#);
        rules.update(&mut p, &women);
        let offers = rules.offers(&p, &women);
        assert_eq!(offers.keys().collect::<Vec<_>>(), ["women"]);
        assert_eq!(offers["women"]["attributes"]["last_category"], "women");
    }
}
