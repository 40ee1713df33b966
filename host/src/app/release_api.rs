//! The admin API's release endpoints: `GET release` (the status), `POST release` (start a
//! canary from the uploaded component), `POST release/promote[?weight=W]`, `POST release/abort`;
//! each change only on release generation `G` with `?if_generation=G`.

use std::time::Duration;

use http::{Method, Request, Response, StatusCode};

use crate::app::App;
use crate::app::answers::{AdminBody, json, json_error, method_not_allowed, query_value, read_candidate};
use crate::app::status;
use crate::release::gate::Candidate;
use crate::release::rollout::Weight;
use crate::release::rollout::change::{self, StartPlan};
use crate::release::store::release::ReleaseError;
use crate::serve::exchange::ResponseBody;

pub async fn handle(
    app: &App,
    req: Request<impl AdminBody>,
    route: &str,
    who: &str,
) -> Response<ResponseBody> {
    let method = req.method().clone();
    let result = match (method, route) {
        (Method::GET | Method::HEAD, "/release") => return json(StatusCode::OK, &status::status(app).await),
        (Method::POST, "/release") => {
            match read_candidate(req, app.swap_policy.max_component_size, &app.oci).await {
                Ok((candidate, uri)) => start(app, candidate, &uri, who).await,
                Err(answer) => return answer,
            }
        }
        (_, "/release") => return method_not_allowed("GET, HEAD, POST"),
        (Method::POST, "/release/promote") => match (weight(req.uri(), "weight"), if_generation(req.uri())) {
            (Ok(weight), Ok(generation)) => change::promote(&app.rollout, weight, generation, who).await,
            (Err(error), _) | (_, Err(error)) => Err(error),
        },
        (Method::POST, "/release/abort") => match if_generation(req.uri()) {
            Ok(generation) => change::abort(&app.rollout, generation, who).await,
            Err(error) => Err(error),
        },
        (_, "/release/promote" | "/release/abort") => return method_not_allowed("POST"),
        _ => {
            return json_error(
                StatusCode::NOT_FOUND,
                "not_found",
                "release endpoints: GET|POST release, POST release/promote, POST release/abort",
            );
        }
    };
    match result {
        Ok(_) => json(StatusCode::OK, &status::status(app).await),
        Err(error) => json_error(error.status(), error.kind(), &error.to_string()),
    }
}

/// A step shorter than a second cannot gather requests to judge; a day is longer than any
/// release should take.
const STEP_INTERVAL_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(24 * 3600));

async fn start(app: &App, candidate: Candidate, uri: &http::Uri, who: &str) -> Result<i64, ReleaseError> {
    let plan = StartPlan {
        weight: weight(uri, "weight")?
            .ok_or_else(|| ReleaseError::BadRequest("`weight` is required, e.g. `?weight=10`".into()))?,
        steps: steps(uri)?,
        step_interval: match query_value(uri, "step_interval") {
            Some(text) => crate::util::units::parse_duration(&text)
                .map_err(|e| ReleaseError::BadRequest(format!("`step_interval`: {e}")))?,
            None => Duration::from_secs(60),
        },
        if_generation: if_generation(uri)?,
    };
    if !(STEP_INTERVAL_RANGE.0..=STEP_INTERVAL_RANGE.1).contains(&plan.step_interval)
        && !plan.steps.is_empty()
    {
        let (low, high) = STEP_INTERVAL_RANGE;
        return Err(ReleaseError::BadRequest(format!(
            "`step_interval` must be between {low:?} and {high:?}, not {:?}",
            plan.step_interval
        )));
    }
    change::start(&app.rollout, candidate, plan, who).await
}

/// `?if_generation=G`: the release generation a change is only to be made on.
fn if_generation(uri: &http::Uri) -> Result<Option<i64>, ReleaseError> {
    match query_value(uri, "if_generation") {
        Some(text) => Ok(Some(text.parse::<i64>().ok().filter(|g| *g >= 0).ok_or_else(|| {
            ReleaseError::BadRequest("`if_generation` must be a release generation".into())
        })?)),
        None => Ok(None),
    }
}

pub fn weight(uri: &http::Uri, name: &str) -> Result<Option<Weight>, ReleaseError> {
    query_value(uri, name)
        .map(|text| text.parse::<Weight>().map_err(|e| ReleaseError::BadRequest(format!("`{name}`: {e}"))))
        .transpose()
}

pub fn steps(uri: &http::Uri) -> Result<Vec<Weight>, ReleaseError> {
    let Some(text) = query_value(uri, "steps") else { return Ok(Vec::new()) };
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|step| match step.parse::<Weight>() {
            Ok(weight) if weight > Weight::ZERO => Ok(weight),
            Ok(_) => Err(ReleaseError::BadRequest("`steps` must be above 0".into())),
            Err(e) => Err(ReleaseError::BadRequest(format!("`steps`: {e}"))),
        })
        .collect()
}
