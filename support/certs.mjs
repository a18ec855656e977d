// Certificates for local stand-ins: a CA and the leaves it signs (node-forge,
// RSA 2048), and the SPKI hash Chromium's --ignore-certificate-errors-spki-list takes.

import crypto from 'node:crypto'
import net from 'node:net'
import forge from 'node-forge'

const DAY_MS = 24 * 3600 * 1000

/** A fresh key pair and a certificate for its public key, valid from a day ago for `days` days. */
function newCertificate(days) {
  const keys = forge.pki.rsa.generateKeyPair(2048)
  const cert = forge.pki.createCertificate()
  cert.publicKey = keys.publicKey
  // Positive, non-zero: first byte below 0x80.
  cert.serialNumber = '01' + crypto.randomBytes(15).toString('hex')
  cert.validity.notBefore = new Date(Date.now() - DAY_MS)
  cert.validity.notAfter = new Date(Date.now() + days * DAY_MS)
  return { keys, cert }
}

export function makeCA(commonName = 'cmux preview proxy test CA') {
  const { keys, cert } = newCertificate(365)
  const attrs = [
    { name: 'commonName', value: commonName },
    { name: 'organizationName', value: 'cmux tests' },
  ]
  cert.setSubject(attrs)
  cert.setIssuer(attrs)
  cert.setExtensions([
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, digitalSignature: true, critical: true },
    { name: 'subjectKeyIdentifier' },
  ])
  cert.sign(keys.privateKey, forge.md.sha256.create())
  return {
    cert,
    key: keys.privateKey,
    certPem: forge.pki.certificateToPem(cert),
    keyPem: forge.pki.privateKeyToPem(keys.privateKey),
  }
}

/** A server certificate for `names` (DNS names or IP literals) signed by `ca`. */
export function makeLeaf(ca, names) {
  const { keys, cert } = newCertificate(30)
  cert.setSubject([{ name: 'commonName', value: names[0] }])
  cert.setIssuer(ca.cert.subject.attributes)
  cert.setExtensions([
    { name: 'basicConstraints', cA: false, critical: true },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    { name: 'extKeyUsage', serverAuth: true },
    {
      name: 'subjectAltName',
      altNames: names.map((n) => (net.isIP(n) ? { type: 7, ip: n } : { type: 2, value: n })),
    },
    { name: 'subjectKeyIdentifier' },
    { name: 'authorityKeyIdentifier', keyIdentifier: ca.cert.generateSubjectKeyIdentifier().getBytes() },
  ])
  cert.sign(ca.key, forge.md.sha256.create())
  return { cert: forge.pki.certificateToPem(cert), key: forge.pki.privateKeyToPem(keys.privateKey) }
}

/** base64(sha256(SubjectPublicKeyInfo DER)) of a PEM certificate, for --ignore-certificate-errors-spki-list. */
export function spkiHash(certPem) {
  const spki = new crypto.X509Certificate(certPem).publicKey.export({ type: 'spki', format: 'der' })
  return crypto.createHash('sha256').update(spki).digest('base64')
}
