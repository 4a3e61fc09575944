"""`gateway serve` as the README runs it: a real process, real ports, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import subprocess
import sys

from tests.helpers import free_port, message, wait_port


def test_serve_files_a_bcc_mail_and_stops_on_sigterm(config_dir, database_url):
    lmtp, smtp = free_port(), free_port()
    env = {**os.environ, "GATEWAY_DATABASE_URL": database_url,
           "GATEWAY_LMTP_LISTEN": f"127.0.0.1:{lmtp}", "GATEWAY_SMTP_LISTEN": f"127.0.0.1:{smtp}",
           "GATEWAY_SUBMISSION_LISTEN": "off", "GATEWAY_METRICS_LISTEN": "off",
           "GATEWAY_API_LISTEN": "off"}
    config = str(config_dir / "gateway.toml")
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", config], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_port(smtp, proc)
        wait_port(lmtp, proc)
        box = subprocess.run([sys.executable, "-m", "gateway", "dropbox", "address", "hashimoto@zylker.example",
                              "--config", config], env=env, capture_output=True, text=True, check=True).stdout.strip()
        with smtplib.SMTP("127.0.0.1", smtp, timeout=30) as client:
            # The MTA hands over the Bcc recipient only; To: is the customer.
            client.ehlo()
            client.mail("hashimoto@zylker.example")
            client.rcpt(box)
            code, reply = client.data(message(to="charless@zillum.com", subject="Top secret offer"))
        assert code == 250
        queue_id = reply.decode().rsplit("queue id ", 1)[1].rstrip(")")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert "Top secret" not in err.decode()  # no subjects or bodies at info level
    events = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    (filed,) = [e for e in events if e["event"] == "recipient_decision" and e.get("outcome") == "filed"]
    assert filed["queue_id"] == queue_id  # the MTA logs the same id from our 250 reply
    assert {"session_id", "org", "route", "code", "status", "duration_ms", "email_id", "level", "timestamp"} <= set(filed)
    assert (filed["org"], filed["route"], filed["code"]) == ("zylker", "dropbox", 250)
    assert any(e["event"] == "stopped" for e in events)
    doc = json.loads(subprocess.run([sys.executable, "-m", "gateway", "export", "--config", config], env=env,
                                    capture_output=True, check=True).stdout)
    assert [lead["email"] for lead in doc["leads"]] == ["charless@zillum.com"]
    assert doc["emails"][0]["source"] == "dropbox"
