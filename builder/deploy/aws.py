"""boto3 sessions, clients and AWS errors, in one place.

Settings are the usual ones: --profile / AWS_PROFILE, --region / AWS_REGION /
AWS_DEFAULT_REGION / the profile's region, AWS_ENDPOINT_URL(_<SERVICE>) (botocore reads
these itself). Throttling and transient errors are retried by botocore's "standard" retry
mode with backoff; what AWS documents as "retry later" for our calls (an update still in
progress, a role that has not propagated yet) is retried here. Everything else becomes one
DeployError line: what failed, and what to do.
"""
from __future__ import annotations

import time

from builder.errors import DeployError

# botocore's standard mode: exponential backoff with jitter on throttling and 5xx.
MAX_ATTEMPTS = 8
# An IAM role created moments ago is not yet assumable by Lambda (eventual consistency).
ROLE_PROPAGATION_S = (2, 4, 8, 16)
# Lambda refuses a change while the previous one is still being applied.
CONFLICT_RETRY_S = (2, 4, 8, 16, 30)


class Clients:
    """Lazily made boto3 clients of one session; tests pass their own factory."""

    def __init__(self, profile: str | None = None, region: str | None = None, factory=None):
        self.profile, self.region = profile, region
        self._factory = factory
        self._made: dict = {}
        self._session = None

    def session(self):
        if self._session is None:
            import boto3
            import botocore.exceptions

            try:
                self._session = boto3.session.Session(profile_name=self.profile, region_name=self.region)
            except botocore.exceptions.ProfileNotFound:
                raise DeployError(f"AWS profile {self.profile!r} is not configured",
                                  hint="check --profile / AWS_PROFILE against ~/.aws/config") from None
        return self._session

    def __call__(self, service: str):
        return self._client(service, service, retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS})

    def invoke_client(self, service: str = "lambda"):
        """The client for running the model (Lambda's Invoke, SageMaker's InvokeEndpoint): one
        attempt (a retried invoke runs the model again) and a read timeout above the
        service's longest run (Lambda 900 s, SageMaker 60 s)."""
        return self._client(f"{service}-invoke", service, read_timeout=905 if service == "lambda" else 65,
                            connect_timeout=10, retries={"mode": "standard", "total_max_attempts": 1})

    def _client(self, key: str, service: str, **config):
        """The client made once under `key`: the factory's (tests), else the session's with
        `config` (botocore Config arguments)."""
        if key not in self._made:
            if self._factory is not None:
                self._made[key] = self._factory(service)
            else:
                from botocore.config import Config

                session = self.session()
                if not session.region_name:
                    raise DeployError("no AWS region is configured",
                                      hint="pass --region, or set AWS_REGION / a region in your AWS profile")
                self._made[key] = session.client(service, config=Config(user_agent_extra="edgebundle", **config))
        return self._made[key]

    @property
    def region_name(self) -> str:
        return self("lambda").meta.region_name


def error_code(e: BaseException) -> str:
    return (getattr(e, "response", None) or {}).get("Error", {}).get("Code", "")


def error_message(e: BaseException) -> str:
    return (getattr(e, "response", None) or {}).get("Error", {}).get("Message", "") or str(e)


def is_not_found(e: BaseException) -> bool:
    # SageMaker answers a Describe of something missing with a ValidationException.
    return error_code(e) in ("ResourceNotFoundException", "RepositoryNotFoundException", "ImageNotFoundException",
                             "NoSuchEntity", "404", "NotFound", "NoSuchKey", "ObjectNotFoundException") or (
        error_code(e) == "ValidationException" and "could not find" in error_message(e).lower())


def _role_not_ready(e: BaseException) -> bool:
    return error_code(e) == "InvalidParameterValueException" and "cannot be assumed" in error_message(e)


def translate(e: BaseException, what: str, where: str | None = None) -> DeployError:
    """One line per AWS failure: what failed and what to do."""
    import botocore.exceptions as bx

    if isinstance(e, DeployError):
        return e
    if isinstance(e, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return DeployError(f"{what}: no AWS credentials found", where=where,
                           hint="configure them (aws configure, AWS_PROFILE, or AWS_ACCESS_KEY_ID/"
                                "AWS_SECRET_ACCESS_KEY), or run where an instance role provides them")
    if isinstance(e, bx.NoRegionError):
        return DeployError(f"{what}: no AWS region is configured", where=where,
                           hint="pass --region, or set AWS_REGION / a region in your AWS profile")
    if isinstance(e, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError)):
        return DeployError(f"{what}: cannot reach AWS ({e})", where=where,
                           hint="check the network, the region and AWS_ENDPOINT_URL")
    code, message = error_code(e), error_message(e)
    hint = {
        "AccessDeniedException": "grant the deploying identity the permission named above (lambda:*, "
                                 "iam:PassRole on the role, s3:PutObject / ecr:* for uploads)",
        "AccessDenied": "grant the deploying identity the permission named above",
        "UnrecognizedClientException": "the credentials are invalid: check the profile or keys",
        "InvalidClientTokenId": "the credentials are invalid: check the profile or keys",
        "ExpiredTokenException": "the session token expired: refresh your credentials (aws sso login, ...)",
        "ExpiredToken": "the session token expired: refresh your credentials (aws sso login, ...)",
        "TooManyRequestsException": "AWS throttled the request after retries: wait a minute and rerun, or ask "
                                    "for a higher Lambda quota",
        "ThrottlingException": "AWS throttled the request after retries: wait a minute and rerun",
        "ResourceConflictException": "another change to this function is in progress (or the name is taken): "
                                     "wait for it to finish and rerun",
        "CodeStorageExceededException": "the account's Lambda code storage (75 GB) is full: delete old versions "
                                        "of your functions (aws lambda delete-function --qualifier N) or old "
                                        "layer versions, or ask AWS for more",
        "RequestEntityTooLargeException": "the request is larger than Lambda accepts: deploy through S3 "
                                          "(--s3-bucket) or use a Lambda image",
        "NoSuchBucket": "create the bucket, or pass an existing one with --s3-bucket (in the function's region)",
        "ResourceNotFoundException": "check the name and the region",
        "RepositoryNotFoundException": "check the repository name and the region",
        "LimitExceededException": "an AWS quota was reached: raise it in Service Quotas or remove unused resources",
        "ServiceException": "AWS had an internal error: rerun in a moment",
        "ResourceLimitExceeded": "a SageMaker quota was reached (instances of this type for endpoint usage, or "
                                 "endpoints): request more in Service Quotas, or pick another --instance-type",
        "ResourceInUse": "SageMaker is still changing this resource: wait for it to finish and rerun",
    }.get(code)
    if code == "InvalidParameterValueException" and "role" in message.lower():
        hint = ("check that the role exists, trusts lambda.amazonaws.com (sts:AssumeRole), and that you may "
                "pass it (iam:PassRole); a role created moments ago takes ~10 s to become usable")
    elif code in ("InvalidParameterValueException", "ValidationException") and hint is None:
        hint = "a value edgebundle sent was refused; check the flags given (and rerun with --debug)"
    text = f"{what}: {code or type(e).__name__}: {message}".rstrip(": ")
    return DeployError(text, where=where, hint=hint or "rerun with --debug for the full AWS response")


def call(fn, what: str, where: str | None = None, progress=None, **params):
    """fn(**params), retrying what AWS says to retry (an update in progress, a new role not
    yet assumable); other failures become a DeployError."""
    import botocore.exceptions as bx

    conflicts, roles = list(CONFLICT_RETRY_S), list(ROLE_PROPAGATION_S)
    while True:
        try:
            return fn(**params)
        except (bx.ClientError, bx.BotoCoreError) as e:
            waits = conflicts if error_code(e) == "ResourceConflictException" and "in progress" in \
                error_message(e) else roles if _role_not_ready(e) else None
            if waits:
                delay = waits.pop(0)
                if progress is not None:
                    progress.info(f"    {what}: {error_message(e)}; retrying in {delay} s")
                time.sleep(delay)
                continue
            raise translate(e, what, where) from e
