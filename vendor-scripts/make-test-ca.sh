#!/bin/bash
# Makes a test PKI for certificate authentication (openssl): a root CA, an intermediate CA,
# a gateway certificate the native clients accept, and client certificates (RSA and ECDSA).
# For labs and tests only: the keys are unencrypted.
#
#   make-test-ca.sh OUTDIR [GATEWAY_NAME]        (GATEWAY_NAME defaults to gw.roamgate.test)
#
# OUTDIR gets:
#   ca.pem ca.key                  root CA (RSA 3072), what clients and the gateway trust
#   intermediate.pem .key          intermediate CA (RSA 2048) that issues the gateway's cert
#   gw.pem gw.key                  the gateway: RSA 2048; EKU serverAuth and the IKE
#                                  intermediate (1.3.6.1.5.5.8.2.2) as Windows wants; the name in
#                                  a dNSName SAN and in the subject CN (macOS/iOS match the SAN)
#   gw-chain.pem                   gw.pem then intermediate.pem: roamgate's `cert` (it sends both)
#   rw-rsa.pem .key                client, RSA 2048, EKU clientAuth, SAN dNSName
#                                  rw-rsa.roamgate.test and e-mail rw-rsa@roamgate.test
#   rw-ecdsa.pem .key              client, ECDSA P-256, the same for rw-ecdsa
#   ca.crl                         the root's CRL (empty; `REVOKE=rw-rsa` revokes that client)
#
# RSA_BITS (default 2048) sizes the RSA keys of the intermediate, gw and rw-rsa: 4096 makes a
# gateway chain of about 4 KB (the IKE fragmentation test over a 576-byte MTU).
# ORG (default "roamgate test") names the CAs: "/O=$ORG/CN=$ORG root CA" and intermediate.
# Private keys are PKCS#8 PEM ("BEGIN PRIVATE KEY"), which roamgate and strongSwan both read.
# Validity: DAYS (default 825) from now; set START (openssl -startdate form, YYMMDDHHMMSSZ)
# to back-date them.
set -euo pipefail
out=${1:?usage: make-test-ca.sh OUTDIR [GATEWAY_NAME]}
gw=${2:-gw.roamgate.test}
days=${DAYS:-825}
org=${ORG:-roamgate test}
bits=${RSA_BITS:-2048}
mkdir -p "$out"
cd "$out"

# A minimal `openssl ca` setup for issuing with chosen extensions and for the CRL.
mkdir -p db
: > db/index.txt
[ -f db/serial ] || echo 1000 > db/serial
[ -f db/crlnumber ] || echo 1000 > db/crlnumber
cat > ca.cnf <<EOF
[ ca ]
default_ca = root
[ root ]
dir = .
database = db/index.txt
serial = db/serial
crlnumber = db/crlnumber
new_certs_dir = db
certificate = ca.pem
private_key = ca.key
default_md = sha256
default_days = $days
default_crl_days = 30
policy = any
unique_subject = no
copy_extensions = none
[ inter ]
dir = .
database = db/index.txt
serial = db/serial
crlnumber = db/crlnumber
new_certs_dir = db
certificate = intermediate.pem
private_key = intermediate.key
default_md = sha256
default_days = $days
policy = any
unique_subject = no
[ any ]
commonName = supplied
organizationName = optional
[ v3_root ]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ v3_inter ]
basicConstraints = critical, CA:true, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ v3_gw ]
basicConstraints = CA:false
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, 1.3.6.1.5.5.8.2.2
subjectAltName = DNS:$gw
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ v3_client ]
basicConstraints = CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = DNS:\${ENV::CLIENT}.roamgate.test, email:\${ENV::CLIENT}@roamgate.test
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
export CLIENT=none
start=()
[ -n "${START:-}" ] && start=(-startdate "$START")

key() { # FILE rsa BITS | FILE ec CURVE
    case $2 in
    rsa) openssl genpkey -quiet -algorithm RSA -pkeyopt "rsa_keygen_bits:$3" -out "$1" ;;
    ec) openssl genpkey -quiet -algorithm EC -pkeyopt "ec_paramgen_curve:$3" \
        -pkeyopt ec_param_enc:named_curve -out "$1" ;;
    esac
}

issue() { # NAME CA_SECTION EXT_SECTION SUBJECT
    openssl req -new -key "$1.key" -subj "$4" -out "$1.csr"
    openssl ca -batch -config ca.cnf -name "$2" -extensions "$3" "${start[@]}" \
        -notext -in "$1.csr" -out "$1.pem" 2>/dev/null
    rm -f "$1.csr"
}

key ca.key rsa 3072
openssl req -new -key ca.key -subj "/O=$org/CN=$org root CA" -out ca.csr
openssl ca -batch -config ca.cnf -name root -selfsign -extensions v3_root "${start[@]}" \
    -notext -in ca.csr -out ca.pem 2>/dev/null
rm -f ca.csr

key intermediate.key rsa "$bits"
issue intermediate root v3_inter "/O=$org/CN=$org intermediate CA"

key gw.key rsa "$bits"
issue gw inter v3_gw "/O=roamgate test/CN=$gw"
cat gw.pem intermediate.pem > gw-chain.pem

CLIENT=rw-rsa
key rw-rsa.key rsa "$bits"
issue rw-rsa root v3_client "/O=roamgate test/CN=rw-rsa.roamgate.test"
CLIENT=rw-ecdsa
key rw-ecdsa.key ec P-256
issue rw-ecdsa root v3_client "/O=roamgate test/CN=rw-ecdsa.roamgate.test"

if [ -n "${REVOKE:-}" ]; then
    openssl ca -config ca.cnf -name root -revoke "$REVOKE.pem" 2>/dev/null
fi
openssl ca -config ca.cnf -name root -gencrl -out ca.crl 2>/dev/null
chmod 600 ./*.key
echo "test PKI in $out: ca.pem, gw-chain.pem + gw.key ($gw), rw-rsa, rw-ecdsa, ca.crl"
