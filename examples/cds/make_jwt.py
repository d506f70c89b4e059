"""A CDS Hooks client JWT for the README's worked example (ES384, 5 minutes, a fresh jti).

    python examples/cds/make_jwt.py PRIVATE_KEY.pem ISSUER URL_INVOKED [KID]
"""

import sys
import time
import uuid

import jwt

key_file, issuer, audience = sys.argv[1:4]
kid = sys.argv[4] if len(sys.argv) > 4 else "ehr-1"
now = int(time.time())
claims = {"iss": issuer, "aud": audience, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
with open(key_file, "rb") as f:
    print(jwt.encode(claims, f.read(), algorithm="ES384", headers={"kid": kid, "typ": "JWT"}))
