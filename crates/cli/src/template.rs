//! Field paths over objects, for `--template` and `ps --filter`.
//!
//! Two spellings are accepted. Ignite's Go-template form names Go struct fields
//! (`{{.ObjectMeta.Name}}`, `{{.Spec.CPUs}}`, `{{.Status.IPAddresses}}`); it is matched
//! case-insensitively against the JSON field names, `ObjectMeta`/`TypeMeta` are the embedded
//! structs of Ignite's objects (so `{{.Name}}` works too), and the v1alpha2 path
//! `Status.IPAddresses` still finds `status.network.ipAddresses`. The JSONPath form
//! (`{.status.network.ipAddresses[0]}`, as kubectl) uses JSON names and indexes.

use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("invalid template {0:?}: unterminated {{{{")]
    Unterminated(String),
    #[error("invalid template field {0:?}: expected a path such as .Spec.CPUs")]
    BadPath(String),
    #[error("invalid filter {0:?}: expected FIELD=VALUE, FIELD!=VALUE, FIELD=~VALUE or FIELD!~VALUE")]
    BadFilter(String),
}

/// A compiled path: segments, each a field name or an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Field(String),
    Index(usize),
}

fn parse_path(p: &str) -> Result<Vec<Seg>, TemplateError> {
    let p = p.trim();
    let body = p.strip_prefix('.').ok_or_else(|| TemplateError::BadPath(p.into()))?;
    if body.is_empty() {
        return Ok(vec![]);
    }
    let mut segs = Vec::new();
    for part in body.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if name.is_empty() && rest.is_empty() {
            return Err(TemplateError::BadPath(p.into()));
        }
        if !name.is_empty() {
            if !name.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '-') {
                return Err(TemplateError::BadPath(p.into()));
            }
            segs.push(Seg::Field(name.to_string()));
        }
        while let Some(r) = rest.strip_prefix('[') {
            let (idx, after) = r.split_once(']').ok_or_else(|| TemplateError::BadPath(p.into()))?;
            segs.push(Seg::Index(idx.parse().map_err(|_| TemplateError::BadPath(p.into()))?));
            rest = after;
        }
        if !rest.is_empty() {
            return Err(TemplateError::BadPath(p.into()));
        }
    }
    Ok(segs)
}

fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    let obj = v.as_object()?;
    if let Some(x) = obj.get(name) {
        return Some(x);
    }
    let lname = name.to_ascii_lowercase();
    if let Some((_, x)) = obj.iter().find(|(k, _)| k.to_ascii_lowercase() == lname) {
        return Some(x);
    }
    None
}

/// Resolves a path; `None` when a field is absent.
pub fn resolve<'a>(root: &'a Value, segs: &[Seg]) -> Option<&'a Value> {
    let mut cur = root;
    let mut i = 0;
    while i < segs.len() {
        match &segs[i] {
            Seg::Index(n) => cur = cur.as_array()?.get(*n)?,
            Seg::Field(name) => {
                let lname = name.to_ascii_lowercase();
                if std::ptr::eq(cur, root) && lname == "objectmeta" {
                    cur = field(cur, "metadata")?;
                } else if std::ptr::eq(cur, root) && lname == "typemeta" {
                    // Embedded: apiVersion and kind sit at the top.
                } else if let Some(x) = field(cur, name) {
                    cur = x;
                } else if std::ptr::eq(cur, root) && field(root, "metadata").and_then(|m| field(m, name)).is_some() {
                    cur = field(root, "metadata").and_then(|m| field(m, name))?;
                } else if lname == "ipaddresses" && field(cur, "network").is_some() {
                    cur = field(field(cur, "network")?, "ipAddresses")?;
                } else {
                    return None;
                }
            }
        }
        i += 1;
    }
    Some(cur)
}

/// Prints a value as Go's text/template would: strings bare, lists as `[a b]`, maps as
/// `map[k:v]`, absent as `<no value>`.
pub fn go_string(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "<no value>".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => format!("[{}]", a.iter().map(|x| go_string(Some(x))).collect::<Vec<_>>().join(" ")),
        Some(Value::Object(o)) => {
            format!(
                "map[{}]",
                o.iter().map(|(k, x)| format!("{k}:{}", go_string(Some(x)))).collect::<Vec<_>>().join(" ")
            )
        }
        Some(other) => other.to_string(),
    }
}

enum Piece {
    Text(String),
    Path(Vec<Seg>),
}

/// A compiled output template.
pub struct Template(Vec<Piece>);

impl Template {
    /// Compiles `{{.Go.Path}}` placeholders, or a whole `{.json.path}` / `jsonpath={...}`.
    pub fn parse(src: &str) -> Result<Template, TemplateError> {
        let s = src.strip_prefix("jsonpath=").unwrap_or(src);
        if s.starts_with('{') && !s.starts_with("{{") {
            let mut pieces = Vec::new();
            let mut rest = s;
            while let Some(start) = rest.find('{') {
                if start > 0 {
                    pieces.push(Piece::Text(rest[..start].to_string()));
                }
                let end = rest[start..].find('}').ok_or_else(|| TemplateError::Unterminated(src.into()))?;
                pieces.push(Piece::Path(parse_path(&rest[start + 1..start + end])?));
                rest = &rest[start + end + 1..];
            }
            if !rest.is_empty() {
                pieces.push(Piece::Text(rest.to_string()));
            }
            return Ok(Template(pieces));
        }
        let mut pieces = Vec::new();
        let mut rest = s;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                pieces.push(Piece::Text(rest[..start].to_string()));
            }
            let end = rest[start..].find("}}").ok_or_else(|| TemplateError::Unterminated(src.into()))?;
            pieces.push(Piece::Path(parse_path(&rest[start + 2..start + end])?));
            rest = &rest[start + end + 2..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.replace("\\n", "\n").replace("\\t", "\t")));
        }
        Ok(Template(pieces))
    }

    pub fn render(&self, v: &Value) -> String {
        self.0
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.clone(),
                Piece::Path(segs) => go_string(resolve(v, segs)),
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Contains,
    NotContains,
}

/// A conjunction of `FIELD op VALUE` terms, comma separated.
#[derive(Debug)]
pub struct Filter(Vec<(Vec<Seg>, Op, String)>);

impl Filter {
    pub fn parse(src: &str) -> Result<Filter, TemplateError> {
        let mut terms = Vec::new();
        for term in src.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (lhs, op, rhs) = split_op(term).ok_or_else(|| TemplateError::BadFilter(term.into()))?;
            let lhs = lhs.trim();
            let path = lhs.strip_prefix("{{").and_then(|l| l.strip_suffix("}}")).unwrap_or(lhs).trim();
            let path = if path.starts_with('.') { path.to_string() } else { format!(".{path}") };
            terms.push((parse_path(&path).map_err(|_| TemplateError::BadFilter(term.into()))?, op, rhs.to_string()));
        }
        Ok(Filter(terms))
    }

    pub fn matches(&self, v: &Value) -> bool {
        self.0.iter().all(|(path, op, want)| {
            let got = go_string(resolve(v, path));
            match op {
                Op::Eq => &got == want,
                Op::Ne => &got != want,
                Op::Contains => got.contains(want.as_str()),
                Op::NotContains => !got.contains(want.as_str()),
            }
        })
    }
}

fn split_op(term: &str) -> Option<(&str, Op, &str)> {
    // Skip past a `{{...}}` so operators inside it are not seen.
    let from = term.find("}}").map(|i| i + 2).unwrap_or(0);
    let t = &term[from..];
    for (tok, op) in [("!=", Op::Ne), ("=~", Op::Contains), ("!~", Op::NotContains), ("==", Op::Eq), ("=", Op::Eq)] {
        if let Some(i) = t.find(tok) {
            return Some((&term[..from + i], op, &term[from + i + tok.len()..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vm() -> Value {
        json!({"apiVersion": "ignite.weave.works/v1alpha4", "kind": "VM",
               "metadata": {"name": "my-vm", "uid": "e04128e6f96176a8", "labels": {"app": "web"}},
               "spec": {"cpus": 2, "memory": "512MB", "image": {"oci": "weaveworks/ignite-ubuntu:latest"}},
               "status": {"running": true, "network": {"plugin": "cni", "ipAddresses": ["10.61.0.2", "10.61.0.3"]}}})
    }

    #[test]
    fn go_paths() {
        let v = vm();
        assert_eq!(Template::parse("{{.ObjectMeta.Name}}").unwrap().render(&v), "my-vm");
        assert_eq!(Template::parse("{{.Name}}").unwrap().render(&v), "my-vm");
        assert_eq!(Template::parse("{{.UID}}").unwrap().render(&v), "e04128e6f96176a8");
        assert_eq!(Template::parse("{{.Spec.CPUs}}").unwrap().render(&v), "2");
        assert_eq!(Template::parse("{{.Spec.Image.OCI}}").unwrap().render(&v), "weaveworks/ignite-ubuntu:latest");
        assert_eq!(Template::parse("{{.Status.Network.IPAddresses}}").unwrap().render(&v), "[10.61.0.2 10.61.0.3]");
        assert_eq!(Template::parse("{{.Status.IPAddresses}}").unwrap().render(&v), "[10.61.0.2 10.61.0.3]");
        assert_eq!(Template::parse("ip={{.Status.Network.IPAddresses[1]}}\\n").unwrap().render(&v), "ip=10.61.0.3\n");
        assert_eq!(Template::parse("{{.Spec.Nope}}").unwrap().render(&v), "<no value>");
        assert_eq!(Template::parse("{{.Labels}}").unwrap().render(&v), "map[app:web]");
        assert!(Template::parse("{{.Spec").is_err());
        assert!(Template::parse("{{Spec}}").is_err());
    }

    #[test]
    fn jsonpath() {
        let v = vm();
        assert_eq!(Template::parse("{.status.network.ipAddresses[0]}").unwrap().render(&v), "10.61.0.2");
        assert_eq!(Template::parse("jsonpath={.metadata.name}").unwrap().render(&v), "my-vm");
    }

    #[test]
    fn filters() {
        let v = vm();
        assert!(Filter::parse(
            "{{.ObjectMeta.Name}}=my-vm,{{.Spec.CPUs}}!=3,{{.Spec.Image.OCI}}=~weaveworks/ignite-ubuntu"
        )
        .unwrap()
        .matches(&v));
        assert!(Filter::parse("{{.Spec.Memory}}=~512,{{.Status.Running}}=true").unwrap().matches(&v));
        assert!(!Filter::parse("{{.Spec.CPUs}}==3").unwrap().matches(&v));
        assert!(Filter::parse("{{.Labels.app}}!~db").unwrap().matches(&v));
        assert!(Filter::parse(".metadata.name=my-vm").unwrap().matches(&v));
        assert!(Filter::parse("name=my-vm").unwrap().matches(&v));
        assert!(Filter::parse("{{.Spec.CPUs}}").is_err());
    }
}
