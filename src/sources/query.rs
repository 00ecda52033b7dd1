//! A Prometheus server's answer to an instant query (`/api/v1/query`):
//! an instant vector or a scalar, each value a string ("1.5", "NaN",
//! "+Inf") beside its time.

use serde::Deserialize;

use super::exposition::Series;

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct VectorItem {
    #[serde(default)]
    metric: std::collections::BTreeMap<String, String>,
    value: (f64, String),
}

/// The series of an instant query's answer (a scalar is one series without
/// labels), or what is wrong with it.
pub fn decode(body: &[u8]) -> Result<Vec<Series>, String> {
    let a: Answer =
        serde_json::from_slice(body).map_err(|e| format!("not a Prometheus query answer: {e}"))?;
    if a.status != "success" {
        return Err(format!(
            "the query failed: {}{}",
            a.error_type.map(|t| format!("{t}: ")).unwrap_or_default(),
            a.error.unwrap_or_else(|| format!("status {:?}", a.status))
        ));
    }
    let data = a.data.ok_or("a successful answer without data")?;
    let value = |s: &str| -> Result<f64, String> {
        s.parse::<f64>()
            .map_err(|_| format!("the value {s:?} is not a number"))
    };
    match data.result_type.as_str() {
        "vector" => {
            let items: Vec<VectorItem> = serde_json::from_value(data.result)
                .map_err(|e| format!("a vector result that does not read: {e}"))?;
            items
                .into_iter()
                .map(|i| {
                    Ok(Series {
                        name: i.metric.get("__name__").cloned().unwrap_or_default(),
                        labels: i.metric.into_iter().filter(|(k, _)| k != "__name__").collect(),
                        value: value(&i.value.1)?,
                    })
                })
                .collect()
        }
        "scalar" => {
            let (_, v): (f64, String) = serde_json::from_value(data.result)
                .map_err(|e| format!("a scalar result that does not read: {e}"))?;
            Ok(vec![Series {
                name: String::new(),
                labels: vec![],
                value: value(&v)?,
            }])
        }
        other => Err(format!(
            "the query answers a {other}: an instant vector or a scalar is needed (a range selector like [5m] needs a function around it, e.g. rate(…[5m]))"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_and_scalars() {
        let v = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"__name__":"up","server":"vm1"},"value":[1700000000.5,"12.5"]},
            {"metric":{"server":"vm2"},"value":[1700000000.5,"NaN"]}]}}"#;
        let s = decode(v).unwrap();
        assert_eq!(s[0].label("server"), Some("vm1"));
        assert_eq!(s[0].name, "up");
        assert_eq!(s[0].value, 12.5);
        assert!(s[1].value.is_nan());
        let sc =
            br#"{"status":"success","data":{"resultType":"scalar","result":[1700000000,"+Inf"]}}"#;
        assert_eq!(decode(sc).unwrap()[0].value, f64::INFINITY);
        let empty = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert!(decode(empty).unwrap().is_empty());
    }

    #[test]
    fn errors_say_what() {
        let e =
            decode(br#"{"status":"error","errorType":"bad_data","error":"parse error at char 4"}"#)
                .unwrap_err();
        assert!(e.contains("bad_data: parse error at char 4"), "{e}");
        let m = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert!(decode(m).unwrap_err().contains("instant vector"));
        assert!(decode(b"<html>").unwrap_err().contains("not a Prometheus"));
        let bad = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"x"]}]}}"#;
        assert!(decode(bad).unwrap_err().contains("not a number"));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = decode(&body);
        }
    }
}
