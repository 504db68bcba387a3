#!/usr/bin/env python3
"""A gRPC client in Python with stubs generated from the repository's proto (grpcio and
grpcio-tools), the way a team outside Rust calls jobpipe. jobpipe's tests run it.

    grpc_client.py TARGET COMMAND [options]
      TARGET            host:port
      COMMAND           submit | health | dlq-list | dlq-replay
      --ca FILE         trust this CA and use TLS (without: plaintext)
      --cert FILE --key FILE   client certificate (mutual TLS)
      --token TOKEN     bearer token
      --type TYPE --queue QUEUE --job-id ID   the job (submit); dlq-*: the queue and the type
                        to select (dlq-list prints "job_ids", dlq-replay "replayed")
      --to QUEUE        dlq-replay: replay into this queue
      --again           after the first answer, wait for a line on standard input and call again
                        on the same channel (the second answer adds "states": the channel's
                        connectivity states in between, ["READY"] if the connection never dropped)

Prints one JSON line per call: {"code": "OK" | status code name, "details": ..., "job_id"/"status": ...}.
"""

import argparse
import functools
import json
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]


@functools.cache
def stubs():
    """Generates the Python stubs from proto/ into a temporary directory and imports them."""
    out = pathlib.Path(tempfile.mkdtemp(prefix="jobpipe-stubs-"))
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}",
         f"--python_out={out}", f"--grpc_python_out={out}", "jobpipe/v1/jobs.proto",
         "jobpipe/v1/admin.proto"],
        check=True,
    )
    for package in (out / "jobpipe", out / "jobpipe" / "v1"):
        (package / "__init__.py").touch()
    sys.path.insert(0, str(out))
    from jobpipe.v1 import admin_pb2, admin_pb2_grpc, jobs_pb2, jobs_pb2_grpc  # noqa: E402

    return jobs_pb2, jobs_pb2_grpc, admin_pb2, admin_pb2_grpc


def channel(args):
    import grpc

    if not args.ca:
        return grpc.insecure_channel(args.target)
    read = lambda path: pathlib.Path(path).read_bytes() if path else None  # noqa: E731
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(args.ca),
        private_key=read(args.key),
        certificate_chain=read(args.cert),
    )
    return grpc.secure_channel(args.target, credentials)


def call(chan, args, metadata):
    """One call on `chan`: its answer, or the status code name and details it failed with."""
    import grpc

    try:
        if args.command.startswith("dlq-"):
            _, _, admin_pb2, admin_pb2_grpc = stubs()
            stub = admin_pb2_grpc.AdminServiceStub(chan)
            selector = admin_pb2.DeadLetterFilter(job_types=[args.type])
            if args.command == "dlq-list":
                page = stub.ListDeadLetters(
                    admin_pb2.ListDeadLettersRequest(queue=args.queue or "", filter=selector),
                    metadata=metadata, timeout=20)
                return {"code": "OK", "job_ids": [entry.job_id for entry in page.entries]}
            request = admin_pb2.ReplayDeadLettersRequest(
                queue=args.queue or "", filter=selector, target_queue=args.to or "")
            last = None
            for progress in stub.ReplayDeadLetters(request, metadata=metadata, timeout=60):
                last = progress
            return {"code": "OK", "replayed": last.replayed, "done": last.done}
        if args.command == "submit":
            jobs_pb2, jobs_pb2_grpc, _, _ = stubs()
            stub = jobs_pb2_grpc.JobServiceStub(chan)
            spec = jobs_pb2.JobSpec(type=args.type, queue=args.queue or "", job_id=args.job_id or "")
            answer = stub.SubmitJob(jobs_pb2.SubmitJobRequest(job=spec), metadata=metadata, timeout=20)
            return {"code": "OK", "job_id": answer.job_id}
        check = chan.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=lambda service: b"\x0a" + bytes([len(service)]) + service,
            response_deserializer=lambda data: data,
        )
        answer = check(b"jobpipe.v1.JobService", metadata=metadata, timeout=20)
        serving = answer == b"\x08\x01"
        return {"code": "OK", "status": "SERVING" if serving else answer.hex()}
    except grpc.RpcError as error:
        return {"code": error.code().name, "details": error.details()}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("command", choices=["submit", "health", "dlq-list", "dlq-replay"])
    for flag in ("--ca", "--cert", "--key", "--token", "--queue", "--job-id", "--to"):
        parser.add_argument(flag)
    parser.add_argument("--again", action="store_true")
    parser.add_argument("--type", default="noop")
    args = parser.parse_args()

    metadata = [("authorization", f"Bearer {args.token}")] if args.token else []
    with channel(args) as chan:
        print(json.dumps(call(chan, args, metadata)), flush=True)
        if args.again:
            states = []
            chan.subscribe(lambda state: states.append(state.name))
            sys.stdin.readline()
            answer = call(chan, args, metadata)
            answer["states"] = states
            print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
